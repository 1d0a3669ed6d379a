"""Benchmark: an embedder on real anime faces, against a colour-histogram nearest neighbour (prints figures).

    python scripts/bench_identify_real.py [--model DIR] [--faces SET ...] [--refs 5] [--draws 3]

``--model``: a starter embedder's folder (its manifest.json); default: the installed active embedder. ``--faces``:
face sets (moeimouto-style ``train/ test/`` or flat ``<character>/*``); default: ``../shared/data/faces/`` 's
moeimouto10, onepiece5 and keima3 when present. Protocols:

- few-shot K: gallery = K random references of EVERY character of every set; queries = every other image of the
  characters the embedder never trained on (not in its manifest's ``real_characters_trained``); top-1, mean over
  ``--draws`` draws of the references;
- closed set: the first moeimouto-style set's test split against a gallery of its train split
  (core.evaluation.identification, as ``anibot eval identify`` does it), with the manifest's threshold;
- the same two for a colour-histogram nearest neighbour (HSV, 16 x 4 x 4 bins, square-rooted, cosine).

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.characters.gallery import Calibration, Gallery, GalleryItem
from core.datasets.folders import LabelledImage, load_folder_dataset
from core.evaluation.identification import evaluate_identification
from core.vision.intake import decode_image_file
from core.vision.slots.base import Manifest
from core.vision.slots.embedder import EMBEDDER_LOADERS, l2_normalise, pad_to_square

DEFAULT_SETS = ("moeimouto10", "onepiece5", "keima3")
SHARED_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


class ColourHistogram:
    """An "embedder" whose vector is a square-rooted HSV histogram of the padded crop (the colour baseline)."""

    version = "colour-histogram"

    def __init__(self, bins: tuple[int, int, int] = (16, 4, 4), size: int = 64) -> None:
        self.bins = bins
        self.size = size
        self.dim = int(np.prod(bins))

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        rows = []
        for crop in crops:
            hsv = np.asarray(pad_to_square(crop).resize((self.size, self.size)).convert("HSV")).reshape(-1, 3)
            hist, _ = np.histogramdd(hsv, bins=self.bins, range=((0, 256), (0, 256), (0, 256)))
            rows.append(np.sqrt(hist.ravel() / max(1, len(hsv))))
        return l2_normalise(np.array(rows, np.float32)) if rows else np.zeros((0, self.dim), np.float32)


def _load(items: list[LabelledImage]) -> list[Image.Image]:
    return [decode_image_file(i.path, max_bytes=20 << 20, max_pixels=40_000_000).image for i in items]


def embed_all(embedder, items: list[LabelledImage], batch: int = 64) -> np.ndarray:
    return np.concatenate([embedder.embed(_load(items[i : i + batch])) for i in range(0, len(items), batch)])


def few_shot(
    emb: np.ndarray, items: list[LabelledImage], scored: set[str], *, refs: int, draws: int, seed: int
) -> tuple[float, dict[str, float], int]:
    """(mean top-1, per-character top-1 of the first draw, queries per draw) of the few-shot protocol."""
    labels = np.array([i.label for i in items])
    raw = Calibration(scale=1.0, shift=0.0)
    scores, per_character, n_queries = [], {}, 0
    for draw in range(draws):
        rng = random.Random(seed + draw)
        gallery_rows: list[int] = []
        for label in sorted(set(labels)):
            rows = list(np.flatnonzero(labels == label))
            gallery_rows += rng.sample(rows, min(refs, len(rows)))
        in_gallery = set(gallery_rows)
        queries = [r for r in range(len(items)) if labels[r] in scored and r not in in_gallery]
        gallery = Gallery(
            emb[gallery_rows], [GalleryItem(str(labels[r]), "", "") for r in gallery_rows], version="bench"
        )
        found = gallery.identify(emb[queries], top_n=1, threshold=-2.0, calibration=raw)
        right = np.array([f.candidates[0].name for f in found]) == labels[queries]
        scores.append(float(right.mean()))
        n_queries = len(queries)
        if draw == 0:
            for label in sorted(scored):
                mask = labels[queries] == label
                per_character[label] = float(right[mask].mean()) if mask.any() else float("nan")
    return float(np.mean(scores)), per_character, n_queries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, help="an embedder folder (manifest.json); default: the installed one"
    )
    parser.add_argument("--faces", type=Path, action="append", help="a face set (repeatable)")
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--score",
        action="append",
        help="score only these never-trained characters (repeatable; e.g. a validation set)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    if args.model is not None:
        manifest = Manifest.load(args.model)
    else:
        from core.settings import get_settings
        from core.vision.slots.registry import active_manifest

        manifest = active_manifest(get_settings().models_dir, "embedder")
        if manifest is None:
            raise SystemExit("no embedder installed: pass --model DIR or run `anibot models build`")
    faces = args.faces or [SHARED_FACES / name for name in DEFAULT_SETS if (SHARED_FACES / name).is_dir()]
    if not faces:
        raise SystemExit("no face sets: pass --faces DIR (moeimouto-style or <character>/* folders)")
    embedder = EMBEDDER_LOADERS[manifest.format](manifest, None)
    trained = set(manifest.extra.get("real_characters_trained") or ())
    datasets = {root: load_folder_dataset(root) for root in faces}
    items = [i for data in datasets.values() for part in data.values() for i in part]
    scored = {i.label for i in items} - trained
    if args.score:
        scored &= set(args.score)
    print(f"embedder {manifest.version} ({manifest.extra.get('backbone')}, {manifest.input_size} px)")
    print(
        f"sets: {', '.join(str(f) for f in faces)}; {len({i.label for i in items})} characters, {len(items)} images"
    )
    print(f"trained on ({len(trained)}): {', '.join(sorted(trained)) or '-'}")
    print(f"scored, never trained on ({len(scored)}): {', '.join(sorted(scored))}")

    figures: dict[str, object] = {
        "model": manifest.version,
        "trained": sorted(trained),
        "scored": sorted(scored),
    }
    colour = ColourHistogram()
    for name, model in (("embedder", embedder), ("colour histogram", colour)):
        started = time.perf_counter()
        emb = embed_all(model, items)
        top1, per_character, n_queries = few_shot(
            emb, items, scored, refs=args.refs, draws=args.draws, seed=args.seed
        )
        figures[f"{name} few-shot K={args.refs}"] = round(top1, 4)
        figures[f"{name} few-shot per character"] = {k: round(v, 3) for k, v in per_character.items()}
        print(
            f"{name:>16}: few-shot K={args.refs} top-1 {top1:.3f} (mean of {args.draws} draws, {n_queries} queries, "
            f"{len(scored)} characters scored, gallery of all characters; {time.perf_counter() - started:.0f} s)"
        )
        print(
            "                  per character: " + ", ".join(f"{k} {v:.2f}" for k, v in per_character.items())
        )

    closed = next((root for root, data in datasets.items() if "test" in data), None)
    if closed is not None:
        threshold = float(manifest.thresholds.get("identify", 0.5))
        calibration = Calibration.from_dict(manifest.extra.get("calibration"))
        for name, model in (("embedder", embedder), ("colour histogram", colour)):
            report = evaluate_identification(
                model, datasets[closed], refs=None, threshold=threshold, calibration=calibration
            )
            figures[f"{name} closed-set top-1"] = round(report.top1, 4)
            figures[f"{name} closed-set top-5"] = round(report.top5, 4)
            print(
                f"{name:>16}: closed-set {closed.name} test top-1 {report.top1:.3f}, top-5 {report.top5:.3f} "
                f"({report.n_queries} queries, gallery {report.n_gallery})"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
