"""Several real face sets at once, each split into train / validation / test without touching its test images.

Two layouts (:func:`core.datasets.folders.load_folder_dataset`):

* moeimouto-style ``<root>/{train,test}/<NNN_>character/*``: the test split as it is, the train split less
  ``val_fraction`` of each character (:func:`core.datasets.real_faces.load_face_splits`);
* flat folder-per-character ``<root>/<character>/*`` (e.g. onepiece5, keima3): every image goes to train,
  validation or test by a hash of its character and file name (:func:`flat_split_of`), so the split is the same
  on every machine and for every seed, and a report never scores a training image.

The sets are merged into one :class:`~core.datasets.real_faces.FaceSplits` (a character found in two sets is one
character). ``held_out`` sets are loaded too (their characters can be references and queries) but every one of
their characters is listed in :attr:`FaceSets.held_out_characters`, which the trainers never train on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.datasets.folders import LabelledImage, load_folder_dataset
from core.datasets.real_faces import FaceSplits, load_face_splits
from core.datasets.splits import hash_part

# shares of a flat set: train, validation (thresholds, recipe choices), test (reports)
FLAT_SHARES: dict[str, float] = {"train": 0.70, "val": 0.15, "test": 0.15}


def flat_split_of(item: LabelledImage) -> str:
    """``train``, ``val`` or ``test`` for an image of a flat set, from the sha256 of ``character/file name``."""
    return hash_part(f"{item.label}/{item.path.name}", FLAT_SHARES)


def split_flat(items: Sequence[LabelledImage]) -> FaceSplits:
    """A flat set's images divided by :func:`flat_split_of`."""
    parts: dict[str, list[LabelledImage]] = {split: [] for split in FLAT_SHARES}
    for item in items:
        parts[flat_split_of(item)].append(item)
    return FaceSplits(parts["train"], parts["val"], parts["test"])


def load_any_face_set(root: Path, *, seed: int = 0, val_fraction: float = 0.15) -> FaceSplits:
    """The splits of one set in either layout; a clear error for a folder that is neither."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of face images")
    data = load_folder_dataset(root)
    if "test" in data:
        return load_face_splits(root, seed=seed, val_fraction=val_fraction)
    return split_flat(data["all"])


@dataclass(frozen=True)
class FaceSets:
    """Every given set merged; ``held_out_characters``: the characters of the sets marked held out."""

    roots: tuple[Path, ...]
    splits: FaceSplits
    held_out_characters: tuple[str, ...]


def load_face_sets(
    roots: Sequence[Path], *, held_out: Sequence[Path] = (), seed: int = 0, val_fraction: float = 0.15
) -> FaceSets:
    """``roots`` (and ``held_out``, whose characters are never to be trained on) merged into one set of splits."""
    train: list[LabelledImage] = []
    val: list[LabelledImage] = []
    test: list[LabelledImage] = []
    held: set[str] = set()
    all_roots = [Path(r) for r in roots] + [Path(r) for r in held_out]
    if len(set(all_roots)) != len(all_roots):
        raise ValueError(f"a face set is given twice: {[str(r) for r in all_roots]}")
    for index, root in enumerate(all_roots):
        splits = load_any_face_set(root, seed=seed, val_fraction=val_fraction)
        train += splits.train
        val += splits.val
        test += splits.test
        if index >= len(roots):
            held.update(splits.labels)
    return FaceSets(tuple(all_roots), FaceSplits(train, val, test), tuple(sorted(held)))
