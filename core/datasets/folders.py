"""Folder-per-character image sets: ``DIR/<character>/*.png`` or ``DIR/{train,test}/<character>/*.png``.

A leading ``NNN_`` in a folder name is dropped from the label. Evaluations and the real face sets read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str


def _label(folder: Path) -> str:
    return re.sub(r"^\d+_", "", folder.name)


def _images(root: Path) -> list[LabelledImage]:
    return [
        LabelledImage(p, _label(folder))
        for folder in sorted(d for d in root.iterdir() if d.is_dir())
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def load_folder_dataset(root: Path) -> dict[str, list[LabelledImage]]:
    """``{"train": [...], "test": [...]}`` when the set has splits, else ``{"all": [...]}``."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return {"train": _images(root / "train"), "test": _images(root / "test")}
    items = _images(root)
    if not items:
        raise ValueError(f"{root}: no <character>/<image> folders found")
    return {"all": items}
