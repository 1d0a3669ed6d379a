"""The folder walker: which pictures to tag, where each caption goes, and the ledger of pictures done.

Captions go beside each picture (``a/b.png`` -> ``a/b.txt`` or ``a/b.json``), or under ``--out`` with the same
relative layout; ``csv`` writes one ``tags.csv`` for the whole run. The ledger (``.anibot-tags.json`` in the
output root) holds, per picture, the sha256 of its bytes and the options its caption was made with, so a re-run
skips pictures whose content and options did not change (a renamed option, a new model, a changed picture: done
again).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
LEDGER_NAME = ".anibot-tags.json"
CSV_NAME = "tags.csv"
Format = Literal["txt", "json", "csv"]
Mode = Literal["overwrite", "append", "skip"]
FORMATS = ("txt", "json", "csv")
MODES = ("overwrite", "append", "skip")


@dataclass(frozen=True)
class Picture:
    path: Path
    relative: str  # posix path from the root of the run: the ledger's key and the layout under --out


def collect(inputs: Sequence[Path], *, recursive: bool) -> tuple[Path, list[Picture]]:
    """The root of the run and its pictures, sorted: the image files of each folder (of its sub-folders with
    ``recursive``; hidden ones skipped) and every file named, whatever its suffix (a broken one fails alone)."""
    if not inputs:
        raise ValueError("give at least one folder or picture")
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    resolved = [Path(p).resolve() for p in inputs]
    root = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in resolved]))
    found: dict[Path, None] = {}
    for path in resolved:
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            for file in sorted(candidates):
                hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
                if not hidden and file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                    found[file] = None
        else:
            found[path] = None
    pictures = [Picture(p, p.relative_to(root).as_posix()) for p in sorted(found)]
    return root, pictures


def caption_path(picture: Picture, out_root: Path, fmt: Format) -> Path:
    """Where the caption of ``picture`` goes (``csv``: the run's one ``tags.csv``)."""
    if fmt == "csv":
        return out_root / CSV_NAME
    return (out_root / picture.relative).with_suffix(f".{fmt}")


class Ledger:
    """``{relative path: {sha256, key, caption, tags, rating}}`` in ``<out_root>/.anibot-tags.json``."""

    def __init__(self, out_root: Path) -> None:
        self.path = out_root / LEDGER_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.entries = dict(data.get("pictures", {}))
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("tag ledger %s unreadable (%s): every picture is tagged again", self.path, exc)

    def unchanged(self, picture: Picture, sha256: str, key: dict[str, Any], model: str | None) -> bool:
        """Tagged before from the same bytes with the same options (and the same model, when it is known)."""
        entry = self.entries.get(picture.relative)
        if entry is None or entry.get("sha256") != sha256 or entry.get("key") != key:
            return False
        return model is None or entry.get("model") == model

    def record(self, picture: Picture, entry: dict[str, Any]) -> None:
        self.entries[picture.relative] = entry

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"pictures": self.entries}, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(self.path)
