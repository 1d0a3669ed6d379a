"""Measuring identification on any folder-per-character image set (so it runs on sets nobody here has seen).

Layouts: ``DIR/<character>/*.png`` or ``DIR/{train,test}/<character>/*.png``; a leading ``NNN_`` in a folder name
is dropped from the label. Protocols:

- closed set (``refs=None`` with train/test splits): gallery = every train image, queries = the test split;
- few-shot (``refs=K``): K reference images per character as the gallery, the rest as queries;
- unknown rejection: some characters are left out of the gallery; their queries should come back ``unknown``.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from core.characters.gallery import Calibration, Gallery, GalleryItem
from core.datasets.folders import LabelledImage
from core.vision.intake import decode_image_file
from core.vision.results import UNKNOWN
from core.vision.slots.base import Embedder


@dataclass
class IdentifyReport:
    protocol: str
    n_gallery: int
    n_queries: int
    n_characters: int
    top1: float
    top5: float
    unknown_precision: float | None = None
    unknown_recall: float | None = None
    held_out: list[str] = field(default_factory=list)
    # for plots: best similarity, whether top-1 was right, whether the character was in the gallery
    best_sims: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    known: list[bool] = field(default_factory=list)
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)

    def markdown_row(self) -> str:
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        return (
            f"| {self.protocol} | {self.n_characters} | {self.n_gallery} | {self.n_queries} | {fmt(self.top1)} "
            f"| {fmt(self.top5)} | {fmt(self.unknown_precision)} | {fmt(self.unknown_recall)} |"
        )


MARKDOWN_HEADER = (
    "| protocol | characters | gallery | queries | top-1 | top-5 | unknown precision | unknown recall |\n"
    "|---|---|---|---|---|---|---|---|"
)


def _load(items: Sequence[LabelledImage]) -> list[Image.Image]:
    return [decode_image_file(i.path, max_bytes=20 << 20, max_pixels=40_000_000).image for i in items]


def _embed(embedder: Embedder, items: Sequence[LabelledImage], batch: int = 64) -> np.ndarray:
    chunks = [embedder.embed(_load(items[i : i + batch])) for i in range(0, len(items), batch)]
    return np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)


def split_protocol(
    data: dict[str, list[LabelledImage]],
    refs: int | None,
    *,
    unknown_fraction: float,
    seed: int,
    never_held_out: Collection[str] = (),
) -> tuple[str, list[LabelledImage], list[LabelledImage], list[str]]:
    """(protocol name, gallery, queries, characters held out of the gallery); ``never_held_out`` characters
    always stay in the gallery."""
    rng = random.Random(seed)
    pool = data.get("train") or data["all"]
    labels = sorted({i.label for i in pool})
    candidates = [label for label in labels if label not in never_held_out]
    n_out = min(len(candidates), round(len(labels) * unknown_fraction))
    held_out = sorted(rng.sample(candidates, n_out)) if n_out else []
    if refs is None:
        if "test" not in data:
            raise ValueError("the closed-set protocol needs train/ and test/ splits; pass --refs K")
        gallery = [i for i in data["train"] if i.label not in held_out]
        return "closed-set", gallery, list(data["test"]), held_out
    gallery, queries = [], list(data.get("test", []))
    for label in labels:
        own = [i for i in pool if i.label == label]
        rng.shuffle(own)
        if label not in held_out:
            gallery.extend(own[:refs])
        if "test" not in data:
            queries.extend(own[refs:])
    return f"few-shot K={refs}", gallery, queries, held_out


def evaluate_identification(
    embedder: Embedder,
    data: dict[str, list[LabelledImage]],
    *,
    refs: int | None,
    threshold: float,
    calibration: Calibration,
    unknown_fraction: float = 0.0,
    seed: int = 0,
    score_only: Collection[str] | None = None,
) -> IdentifyReport:
    """Top-1/top-5 over the queries of characters in the gallery (only those in ``score_only`` when given, e.g.
    characters the embedder never trained on, which then always stay in the gallery), and unknown rejection over
    the queries of characters held out of it."""
    protocol, gallery_items, queries, held_out = split_protocol(
        data, refs, unknown_fraction=unknown_fraction, seed=seed, never_held_out=score_only or ()
    )
    if score_only is not None:
        protocol += f" ({', '.join(sorted(score_only))} only)"
        queries = [q for q in queries if q.label in score_only or q.label in held_out]
    gallery = Gallery(
        _embed(embedder, gallery_items),
        [GalleryItem(i.label, "", str(i.path)) for i in gallery_items],
        version="eval",
    )
    found = gallery.identify(_embed(embedder, queries), top_n=5, threshold=threshold, calibration=calibration)
    report = IdentifyReport(
        protocol,
        len(gallery_items),
        len(queries),
        len({i.label for i in queries}),
        0.0,
        0.0,
        held_out=held_out,
    )
    rejected_right = rejected = unknown_total = 0
    known_top1 = known_top5 = known_total = 0
    for query, ident in zip(queries, found, strict=True):
        names = [c.name for c in ident.candidates]
        is_known = query.label not in held_out
        report.best_sims.append(ident.candidates[0].similarity if ident.candidates else -1.0)
        report.correct.append(bool(names) and names[0] == query.label)
        report.known.append(is_known)
        said = ident.name
        report.confusion[(query.label, said)] = report.confusion.get((query.label, said), 0) + 1
        if is_known:
            known_total += 1
            known_top1 += bool(names) and names[0] == query.label
            known_top5 += query.label in names[:5]
        else:
            unknown_total += 1
        if said == UNKNOWN:
            rejected += 1
            rejected_right += not is_known
    report.top1 = known_top1 / known_total if known_total else 0.0
    report.top5 = known_top5 / known_total if known_total else 0.0
    if unknown_total:
        report.unknown_precision = rejected_right / rejected if rejected else 0.0
        report.unknown_recall = rejected_right / unknown_total
    return report


def write_plots(report: IdentifyReport, out_dir: Path, stem: str) -> list[Path]:
    """A precision-recall curve of accepting the top-1 answer, and the confusion matrix."""
    from core.evaluation.plots import confusion_png, pyplot, save

    plt = pyplot()
    written = []
    sims, correct = np.array(report.best_sims), np.array(report.correct) & np.array(report.known)
    order = np.argsort(-sims)
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, len(order) + 1)
    recall = hits / max(1, correct.sum())
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision)
    ax.set_xlabel("recall (correct top-1 accepted)")
    ax.set_ylabel("precision")
    ax.set_title(f"{report.protocol}: accept top-1 by similarity")
    ax.set_ylim(0, 1.02)
    written.append(save(fig, out_dir / f"{stem}-pr.png"))
    written.append(
        confusion_png(
            report.confusion,
            out_dir / f"{stem}-confusion.png",
            title=f"{report.protocol}: confusion (row-normalised)",
            xlabel="answer",
        )
    )
    return written
