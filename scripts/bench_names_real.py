"""Benchmark: the names the whole pipeline gives real anime faces (prints figures; asserts nothing).

    python scripts/bench_names_real.py [--pictures DIR ...] [--faces SET ...] [--sure 0.5]

Runs the installed models and gallery (``ANIBOT_MODELS_DIR``, ``ANIBOT_DATABASE_URL``) on whole pictures of known
characters (``--pictures``: folder per character, every picture; default ``../shared/data/pictures/web5``) and on
the test split of face sets (``--faces``: moeimouto-style ``train/ test/`` or flat ``<character>/*``; a face crop
fills its picture, which head detectors seldom box, so its figures are mostly "no head found"). For the largest
head of each picture it counts the answer shown at the chats' default "sure" threshold (``--sure``): the right
character, a wrong name (by where the name came from: gallery, tagger, both), or no name (unknown, "not sure", or no
head found). A character is right when its name matches the folder's label (core.characters.danbooru's sameness,
so ``kinomoto_sakura`` is "Sakura Kinomoto"). Characters neither the gallery nor the tagger knows can only be named
wrongly: their figures say how often the bot answers confidently and wrongly, what users of such bots complain of
most.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.analysis.service import AnalysisService
from core.characters.danbooru import from_tag, same_character
from core.datasets.face_sets import load_face_sets
from core.datasets.folders import load_folder_dataset
from core.datasets.real_faces import display_name, load_images
from core.settings import get_settings
from core.storage.kv import MemoryKV
from core.storage.store import Store
from core.vision.results import DEFAULT_SURE_CONFIDENCE


def is_character(name: str, series: str, label: str) -> bool:
    written = from_tag(label)
    shown, shown_series = display_name(label)
    return same_character(name, series, written.name, written.series) or same_character(
        name, series, shown, shown_series
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=Path, action="append", help="whole pictures, folder per character")
    parser.add_argument("--faces", type=Path, action="append", help="a face set (repeatable)")
    parser.add_argument("--sure", type=float, default=DEFAULT_SURE_CONFIDENCE)
    args = parser.parse_args(argv)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    pictures = args.pictures or ([shared / "pictures" / "web5"] if not args.faces else [])
    pictures = [p for p in pictures if p.is_dir()]
    sets = args.faces or []
    if not sets and not pictures:
        print("no pictures: pass --pictures DIR or --faces DIR", file=sys.stderr)
        return 2
    settings = get_settings()
    store = Store.from_settings(settings)
    store.create_all()
    service = AnalysisService(settings, MemoryKV(), store)
    pipeline = service.pipeline
    known = set(pipeline.gallery.current()[0].characters) if pipeline.gallery else set()
    tagger = pipeline.slots.tagger
    tag_names = [t.name for t in getattr(tagger, "tags", []) if getattr(t, "category", None) == 4]
    print(
        f"models {settings.models_dir}: gallery of {len(known)} characters, tagger with {len(tag_names)} character "
        f"tags ({pipeline.slots.manifests['tagger'].extra.get('character_names', 'alone') if tagger else '-'})"
    )
    items = [i for root in pictures for split in load_folder_dataset(root).values() for i in split]
    items += load_face_sets(sets).splits.test if sets else []
    started = time.perf_counter()
    groups: dict[str, Counter[str]] = {}
    for item, image in zip(items, load_images(items, longest=1024), strict=True):
        in_gallery = any(is_character(n, s, item.label) for n, s in known)
        in_tagger = any(is_character(*from_tag(t).pair, item.label) for t in tag_names)
        group = (
            "known to the gallery" if in_gallery else ("known to the tagger only" if in_tagger else "unknown")
        )
        counts = groups.setdefault(group, Counter())
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        result = service.analyze(buffer.getvalue(), top_n=3).result
        counts["pictures"] += 1
        if not result.heads:
            counts["no head found"] += 1
            continue
        head = max(result.heads, key=lambda h: h.box.width * h.box.height)
        if not head.is_sure(args.sure):
            counts["no name (unknown or not sure)"] += 1
        elif is_character(head.name, head.series, item.label):
            counts[f"right ({head.source})"] += 1
        else:
            counts[f"wrong ({head.source})"] += 1
    took = time.perf_counter() - started
    print(
        f"{len(items)} pictures of {', '.join(str(s) for s in (*pictures, *sets))}; sure threshold {args.sure:.2f}; "
        f"{took:.0f} s"
    )
    for group, counts in sorted(groups.items()):
        n = counts.pop("pictures")
        parts = ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(counts.items()))
        print(f"  {group} ({n} pictures): {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
