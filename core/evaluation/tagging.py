"""Measuring a tagger through its public ``tag()`` (so the starter and a real WD14 model are measured alike).

- synthetic scenes: per-tag F1 and macro-F1 of the general tags against the scenes' ground truth;
- real faces: hair-colour and eye-colour F1 on a face set's test split, each face labelled with its character's
  canonical look (core.datasets.real_faces.CANONICAL_LOOKS; characters without one are skipped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.vision.slots.base import Tagger

EVAL_SEED_BASE = 800_000_000  # apart from the tagger's training (1e9..) and validation (9e8..) scenes
LENGTH_TAGS = {"long_hair", "short_hair", "very_long_hair", "medium_hair"}


def is_hair_colour(tag: str) -> bool:
    """``aqua_hair``, ``blonde_hair``...: one word before ``_hair`` that is not a length."""
    return tag.endswith("_hair") and tag.count("_") == 1 and tag not in LENGTH_TAGS


def is_eye_colour(tag: str) -> bool:
    return tag.endswith("_eyes") and tag.count("_") == 1 and tag not in {"closed_eyes", "covered_eyes"}


@dataclass
class TagReport:
    name: str
    n_pictures: int
    per_tag_f1: dict[str, float]
    support: dict[str, int]
    macro_f1: float
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)  # (truth, best predicted) counts


def f1_per_tag(
    truth: Sequence[set[str]], predicted: Sequence[set[str]], vocabulary: Iterable[str]
) -> tuple[dict[str, float], dict[str, int]]:
    """F1 of each tag that is in the truth or the predictions at least once."""
    f1, support = {}, {}
    for tag in sorted(set(vocabulary)):
        t = np.array([tag in s for s in truth])
        p = np.array([tag in s for s in predicted])
        denom = int(t.sum() + p.sum())
        if denom == 0:
            continue
        f1[tag] = 2 * int((t & p).sum()) / denom
        support[tag] = int(t.sum())
    return f1, support


def _general(tags: Iterable) -> set[str]:
    return {t.name for t in tags if t.category == "general"}


def evaluate_synthetic(tagger: Tagger, n_scenes: int, *, seed: int = EVAL_SEED_BASE) -> TagReport:
    """Per-tag F1 over the tags core.datasets.synth can produce (macro over tags present in the truth)."""
    from core.datasets.synth import render_scene

    truth, predicted = [], []
    for s in range(seed, seed + n_scenes):
        scene = render_scene(s)
        truth.append(set(scene.tags))
        predicted.append(_general(tagger.tag(scene.image)))
    vocabulary = set().union(*truth) if truth else set()
    f1, support = f1_per_tag(truth, [p & vocabulary for p in predicted], vocabulary)
    present = [f1[t] for t in f1 if support[t] > 0]
    return TagReport("synthetic scenes", n_scenes, f1, support, float(np.mean(present)) if present else 0.0)


@dataclass
class ColourReport:
    hair: TagReport
    eyes: TagReport


def evaluate_real_colours(tagger: Tagger, faces_dir: Path) -> ColourReport:
    """Hair and eye colour F1 on the test split of ``faces_dir`` against each character's canonical look."""
    from core.datasets.real_faces import canonical_tags, load_face_splits, load_images

    items = [i for i in load_face_splits(faces_dir).test if canonical_tags(i.label)]
    images = load_images(items)
    reports = {}
    for family, is_family in (("hair", is_hair_colour), ("eyes", is_eye_colour)):
        truth, predicted, confusion = [], [], {}
        for item, image in zip(items, images, strict=True):
            want = {t for t in canonical_tags(item.label) if is_family(t)}
            tags = [t for t in tagger.tag(image) if t.category == "general" and is_family(t.name)]
            got = {t.name for t in tags}
            truth.append(want)
            predicted.append(got)
            best = max(tags, key=lambda t: t.score).name if tags else "(none)"
            for w in want:
                confusion[(w, best)] = confusion.get((w, best), 0) + 1
        f1, support = f1_per_tag(truth, predicted, set().union(*truth, *predicted))
        present = [f1[t] for t in f1 if support[t] > 0]
        reports[family] = TagReport(
            f"real faces: {family} colour",
            len(items),
            f1,
            support,
            float(np.mean(present)) if present else 0.0,
            confusion,
        )
    return ColourReport(reports["hair"], reports["eyes"])


def tag_markdown(reports: Sequence[TagReport], title: str) -> str:
    lines = [f"# {title}", "", "| set | pictures | macro-F1 |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.n_pictures} | {r.macro_f1:.3f} |" for r in reports]
    for r in reports:
        lines += ["", f"## {r.name}: per tag", "", "| tag | support | F1 |", "|---|---|---|"]
        lines += [f"| {t} | {r.support[t]} | {f:.3f} |" for t, f in sorted(r.per_tag_f1.items())]
    return "\n".join(lines) + "\n"


def write_tag_plots(reports: Sequence[TagReport], out_dir: Path) -> list[Path]:
    """A per-tag F1 bar chart of each report, and a confusion matrix where the report has one."""
    from core.evaluation.plots import confusion_png, pyplot, save

    plt = pyplot()
    written = []
    for r in reports:
        stem = r.name.replace(":", "").replace(" ", "-")
        tags = sorted(r.per_tag_f1)
        fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(tags) + 2), 4))
        ax.bar(range(len(tags)), [r.per_tag_f1[t] for t in tags])
        ax.set_xticks(range(len(tags)), tags, rotation=70, ha="right", fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("F1")
        ax.set_title(f"{r.name}: per-tag F1 (macro {r.macro_f1:.3f})", fontsize=9)
        written.append(save(fig, out_dir / f"tagger-{stem}-f1.png"))
        if r.confusion:
            written.append(
                confusion_png(
                    r.confusion,
                    out_dir / f"tagger-{stem}-confusion.png",
                    title=f"{r.name}: confusion",
                    xlabel="best predicted",
                    ylabel="canonical",
                )
            )
    return written
