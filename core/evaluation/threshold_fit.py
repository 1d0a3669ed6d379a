"""Fitting the active embedder's unknown threshold and confidence calibration on any folder-per-character set.

``anibot eval identify --fit-threshold DIR``: a pulled embedder (deepghs' CCIP, say) comes with a threshold its
authors fitted on their own crops; this one is fitted on the crops anibot's pipeline really gives it.

- What the embedder is given (``images``): ``pictures``: each image is a whole picture, cut as the pipeline cuts
  a head (the detector's largest head, grown by the embedder's crop rule, :mod:`core.vision.crops`; a picture where
  the detector finds no head is skipped, as the pipeline would never embed it); ``crops``: each image is already a
  head crop and is given as it is; ``auto``: ``pictures`` when a detector is installed, else ``crops``.
- Splits: every image of the set (``train/`` and ``test/`` pooled when the set has them) is embedded once. In
  each of ``folds`` rounds a different share of the characters is left out of the gallery (unknown characters;
  over the rounds every character is left out about equally often); each known character has ``refs`` references
  drawn at random and its other images are queries. The best gallery similarity of every query, whether its
  top-1 was right, and whether its character was known go to
  :func:`core.characters.gallery.fit_threshold_and_calibration`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.characters.gallery import Calibration, Gallery, GalleryItem, fit_threshold_and_calibration
from core.characters.teaching import largest_head
from core.datasets.folders import LabelledImage, load_folder_dataset
from core.vision.crops import CropRule, crop_rule_of, embedder_crop
from core.vision.intake import decode_image_file
from core.vision.slots.base import Embedder, HeadDetector, Manifest

IMAGE_MODES = ("auto", "pictures", "crops")
MIN_IMAGES_PER_CHARACTER = 2  # one reference and one query
BATCH = 32


class FitError(ValueError):
    """A folder that cannot be fitted on (the message says why, for the command line)."""


@dataclass
class FitReport:
    threshold: float
    calibration: Calibration
    folder: str
    images: str  # "pictures" or "crops": what the embedder was given
    crop: dict[str, float]
    flip_tta: bool
    refs: int
    folds: int
    characters: int
    n_images: int
    skipped_no_head: int
    known_queries: int
    unknown_queries: int
    top1: float  # of known queries
    accept_right: float  # known queries with a right top-1 accepted at the fitted threshold
    reject_unknown: float  # unknown queries rejected at the fitted threshold
    previous_threshold: float | None = None
    skipped_characters: list[str] = field(default_factory=list)  # fewer than MIN_IMAGES_PER_CHARACTER images

    def note(self) -> dict[str, Any]:
        """What the fit is written into the manifest with (``extra["threshold_fit"]``)."""
        return {
            "folder": self.folder,
            "images": self.images,
            "crop": self.crop,
            "flip_tta": self.flip_tta,
            "characters": self.characters,
            "images_used": self.n_images - self.skipped_no_head,
            "skipped_no_head": self.skipped_no_head,
            "references_per_character": self.refs,
            "folds": self.folds,
            "known_queries": self.known_queries,
            "unknown_queries": self.unknown_queries,
            "top1": round(self.top1, 4),
            "accept_right": round(self.accept_right, 4),
            "reject_unknown": round(self.reject_unknown, 4),
            "previous_threshold": self.previous_threshold,
        }

    def lines(self) -> list[str]:
        before = "" if self.previous_threshold is None else f" (was {self.previous_threshold:.3f})"
        return [
            f"fitted on {self.folder}: {self.characters} characters, {self.n_images - self.skipped_no_head} "
            f"images given as {self.images}"
            + (f" ({self.skipped_no_head} pictures without a head skipped)" if self.skipped_no_head else ""),
            f"crop rule {self.crop}, flip TTA {'on' if self.flip_tta else 'off'}; {self.refs} references per "
            f"known character, {self.folds} folds",
            f"queries: {self.known_queries} of known characters (top-1 {self.top1:.3f}), "
            f"{self.unknown_queries} of unknown ones",
            f"threshold {self.threshold:.4f}{before}; calibration scale {self.calibration.scale:.3f}, "
            f"shift {self.calibration.shift:.4f}",
            f"at the threshold: {self.accept_right:.3f} of right top-1 answers accepted, "
            f"{self.reject_unknown:.3f} of unknown characters' queries rejected",
        ]


def resolve_images(images: str, detector: HeadDetector | None) -> str:
    if images not in IMAGE_MODES:
        raise FitError(f"images must be one of {', '.join(IMAGE_MODES)}, not {images!r}")
    if images == "auto":
        return "pictures" if detector is not None else "crops"
    if images == "pictures" and detector is None:
        raise FitError("images=pictures needs a head detector: none is installed (or use images=crops)")
    return images


def load_set(root: Path) -> list[LabelledImage]:
    """Every image of a folder-per-character set (train/ and test/ pooled); a clear error for a bad folder."""
    root = Path(root)
    if not root.is_dir():
        raise FitError(f"{root} is not a folder")
    try:
        data = load_folder_dataset(root)
    except ValueError as exc:
        raise FitError(str(exc)) from None
    items = [i for part in data.values() for i in part]
    if not items:
        raise FitError(f"{root}: no images in its character folders")
    return items


def embedder_inputs(
    images: Sequence[Image.Image], mode: str, detector: HeadDetector | None, rule: CropRule
) -> list[Image.Image | None]:
    """What the embedder is given for each image (None: a picture where no head was found)."""
    if mode == "crops":
        return [image.convert("RGB") for image in images]
    assert detector is not None
    out: list[Image.Image | None] = []
    for image in images:
        found = detector.detect(image)
        chosen = largest_head(found)
        out.append(None if chosen is None else embedder_crop(image, found[chosen].box, rule))
    return out


def _decode(path: Path) -> Image.Image:
    try:
        return decode_image_file(path, max_bytes=40 << 20, max_pixels=60_000_000).image
    except Exception as exc:  # a corrupt or foreign file: say which one
        raise FitError(f"{path}: not a readable picture ({type(exc).__name__}: {exc})") from None


def embed_set(
    embedder: Embedder, items: Sequence[LabelledImage], mode: str, detector: HeadDetector | None
) -> tuple[list[LabelledImage], np.ndarray, int]:
    """(the items embedded, their embeddings, pictures skipped for having no head)."""
    rule = crop_rule_of(embedder)
    kept: list[LabelledImage] = []
    vectors: list[np.ndarray] = []
    skipped = 0
    for start in range(0, len(items), BATCH):
        part = items[start : start + BATCH]
        inputs = embedder_inputs([_decode(i.path) for i in part], mode, detector, rule)
        pairs = [(item, crop) for item, crop in zip(part, inputs, strict=True) if crop is not None]
        skipped += len(part) - len(pairs)
        if pairs:
            vectors.append(embedder.embed([crop for _, crop in pairs]))
            kept.extend(item for item, _ in pairs)
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)
    return kept, matrix, skipped


def fold_searches(
    labels: Sequence[str], vectors: np.ndarray, *, refs: int, folds: int, n_out: int, seed: int
) -> tuple[list[float], list[bool], list[float]]:
    """Known queries' best similarities and top-1 rightness, and unknown queries' best similarities, over
    ``folds`` rounds that each leave ``n_out`` characters out of the gallery."""
    rng = random.Random(seed)
    characters = sorted(set(labels))
    order = characters[:]
    rng.shuffle(order)
    known_sims: list[float] = []
    known_right: list[bool] = []
    unknown_sims: list[float] = []
    by_label: dict[str, list[int]] = {c: [i for i, lab in enumerate(labels) if lab == c] for c in characters}
    for fold in range(folds):
        held = {order[(fold * n_out + k) % len(order)] for k in range(n_out)}
        gallery_rows: list[int] = []
        known_rows: list[int] = []
        for character in characters:
            rows = by_label[character][:]
            if character in held:
                continue
            rng.shuffle(rows)
            k = min(refs, len(rows) - 1)
            gallery_rows += rows[:k]
            known_rows += rows[k:]
        unknown_rows = [i for c in sorted(held) for i in by_label[c]]
        gallery = Gallery(
            vectors[gallery_rows],
            [GalleryItem(labels[i], "", f"{i:064x}") for i in gallery_rows],
            version=f"fit{fold}",
        )
        queries = known_rows + unknown_rows
        found = gallery.identify(vectors[queries], top_n=1, threshold=-2.0, calibration=Calibration())
        for row, ident in zip(queries, found, strict=True):
            best = ident.candidates[0] if ident.candidates else None
            sim = best.similarity if best is not None else -1.0
            if labels[row] in held:
                unknown_sims.append(sim)
            else:
                known_sims.append(sim)
                known_right.append(best is not None and best.name == labels[row])
    return known_sims, known_right, unknown_sims


def fit_on_folder(
    embedder: Embedder,
    root: Path,
    *,
    detector: HeadDetector | None = None,
    images: str = "auto",
    refs: int = 5,
    folds: int | None = None,
    unknown_fraction: float = 0.2,
    seed: int = 0,
    flip_tta: bool | None = None,
) -> FitReport:
    """Embed the set as the pipeline would and fit the threshold and calibration (see the module's docstring);
    ``folds`` defaults to enough rounds for every character to be left out once; ``flip_tta`` (for the note)
    defaults to what the embedder says."""
    if refs < 1:
        raise FitError("refs must be at least 1")
    if not 0.0 < unknown_fraction < 1.0:
        raise FitError("unknown_fraction must be between 0 and 1")
    mode = resolve_images(images, detector)
    items = load_set(root)
    kept, vectors, skipped = embed_set(embedder, items, mode, detector)
    counts: dict[str, int] = {}
    for item in kept:
        counts[item.label] = counts.get(item.label, 0) + 1
    thin = sorted(c for c, n in counts.items() if n < MIN_IMAGES_PER_CHARACTER)
    usable = [(item, row) for row, item in enumerate(kept) if item.label not in thin]
    characters = sorted({item.label for item, _ in usable})
    if len(characters) < 2:
        raise FitError(
            f"{root}: fitting needs at least 2 characters with {MIN_IMAGES_PER_CHARACTER} or more usable images "
            f"each (one known, one unknown); found {len(characters)}"
            + (f" ({skipped} pictures without a head skipped)" if skipped else "")
        )
    labels = [item.label for item, _ in usable]
    matrix = vectors[[row for _, row in usable]]
    n_out = min(max(1, round(len(characters) * unknown_fraction)), len(characters) - 1)
    rounds = max(1, folds if folds is not None else -(-len(characters) // n_out))
    known_sims, known_right, unknown_sims = fold_searches(
        labels, matrix, refs=refs, folds=rounds, n_out=n_out, seed=seed
    )
    if not known_sims:
        raise FitError(f"{root}: no queries of known characters (each needs more than {refs} images)")
    threshold, calibration = fit_threshold_and_calibration(known_sims, known_right, unknown_sims)
    ks, kr, us = np.asarray(known_sims), np.asarray(known_right, bool), np.asarray(unknown_sims)
    return FitReport(
        threshold=float(threshold),
        calibration=calibration,
        folder=str(root),
        images=mode,
        crop=crop_rule_of(embedder).to_dict(),
        flip_tta=bool(getattr(embedder, "flip", True)) if flip_tta is None else flip_tta,
        refs=refs,
        folds=rounds,
        characters=len(characters),
        n_images=len(items),
        skipped_no_head=skipped,
        known_queries=len(ks),
        unknown_queries=len(us),
        top1=float(kr.mean()),
        accept_right=float((ks[kr] >= threshold).mean()) if kr.any() else 0.0,
        reject_unknown=float((us < threshold).mean()) if len(us) else 0.0,
        skipped_characters=thin,
    )


def write_fit(manifest: Manifest, report: FitReport) -> Manifest:
    """The manifest with the fitted threshold, calibration and a note of what they were fitted on, saved in its
    folder (its version changes with the threshold)."""
    fitted = replace(
        manifest,
        thresholds={**manifest.thresholds, "identify": round(report.threshold, 6)},
        extra={
            **manifest.extra,
            "calibration": report.calibration.to_dict(),
            "threshold_fit": report.note(),
        },
    )
    fitted.save()
    return Manifest.load(manifest.folder)
