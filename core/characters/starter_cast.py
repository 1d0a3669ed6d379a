"""Teaching the bot characters: reference images embedded into the gallery (SQL store, read by every worker)."""

from __future__ import annotations

import hashlib
import io
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.characters.reference_crops import ReferenceCrops
from core.characters.teaching import prepare_reference, store_references
from core.datasets.synth import CAST, render_portrait
from core.storage.store import Store
from core.vision.slots.base import Embedder, HeadDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    image: Image.Image
    sha256: str  # identity of the reference: the sha256 of the bytes the admin posted

    @classmethod
    def from_image(cls, image: Image.Image) -> Reference:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return cls(image, hashlib.sha256(buffer.getvalue()).hexdigest())


def enrol(
    store: Store,
    embedder: Embedder,
    name: str,
    series: str,
    references: Sequence[Reference],
    detector: HeadDetector | None = None,
    crops: ReferenceCrops | None = None,
) -> int:
    """Add a character's references to the gallery; returns how many were new (duplicates are skipped).

    With a ``detector``, each reference is cropped to its head first (and the embedder given what its crop rule
    asks for), so references and queries look alike; with ``crops``, the head crops are kept in the shared folder
    (a retrained embedder embeds them again).
    """
    prepared = [prepare_reference(ref.image, ref.sha256, detector) for ref in references]
    added = store_references(store, embedder, name, series, prepared, crops)
    log.info("enrolled %s (%s): %d new of %d references", name, series or "-", added, len(references))
    return added


def enrol_face_set(
    store: Store,
    embedder: Embedder,
    faces_dir: Path,
    *,
    detector: HeadDetector | None = None,
    refs_per_character: int = 5,
    seed: int = 0,
    crops: ReferenceCrops | None = None,
) -> int:
    """Enrol each character of a real face set with ``refs_per_character`` images of its training split
    (never its test split, which the demo and ``anibot eval`` query with)."""
    from core.datasets.real_faces import display_name, load_face_splits, load_images

    splits = load_face_splits(faces_dir, seed=seed)
    rng = random.Random(seed)
    total = 0
    for label in splits.labels:
        own = [i for i in splits.train if i.label == label]
        chosen = rng.sample(own, min(refs_per_character, len(own)))
        if not chosen:
            continue
        name, series = display_name(label)
        refs = [Reference.from_image(image) for image in load_images(chosen)]
        total += enrol(store, embedder, name, series, refs, detector, crops)
    return total


def enrol_synthetic_cast(
    store: Store,
    embedder: Embedder,
    *,
    detector: HeadDetector | None = None,
    refs_per_character: int = 5,
    seed: int = 7_000_000,
    crops: ReferenceCrops | None = None,
) -> int:
    """Enrol every synthetic character with portraits rendered from seeds disjoint from training and the demo."""
    total = 0
    for index, spec in enumerate(CAST):
        refs = [
            Reference.from_image(render_portrait(spec.key, seed + index * 100 + k))
            for k in range(refs_per_character)
        ]
        total += enrol(store, embedder, spec.name, spec.series, refs, detector, crops)
    return total
