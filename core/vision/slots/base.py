"""The small interfaces behind the pipeline's four model slots, and their manifest.

A slot implementation is built from a :class:`Manifest` (``models/<slot>/manifest.json``) by the loader registered
for its ``format`` (see :mod:`core.vision.slots.registry`). Each exposes ``version``: a short id that changes whenever
its weights or thresholds change, so cached analyses never outlive the model that made them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from core.vision.results import Box, Tag

MANIFEST_NAME = "manifest.json"
# manifest extras that change what an embedder's vectors are (so they are part of its version when set)
VECTOR_EXTRAS = ("crop", "flip_tta")


@dataclass(frozen=True)
class Manifest:
    """What a slot's model is, where its files are, and how to use it."""

    slot: str  # "detector" | "embedder" | "tagger" | "captioner"
    name: str
    format: str  # a key of core.vision.slots.registry.LOADERS
    files: dict[str, str] = field(default_factory=dict)  # role -> file name relative to the manifest's folder
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> hex digest
    thresholds: dict[str, float] = field(default_factory=dict)
    input_size: int | None = None
    provenance: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    folder: Path = Path(".")

    def path(self, role: str) -> Path:
        return self.folder / self.files[role]

    @property
    def version(self) -> str:
        """Changes with the weights (their digests), the thresholds, and an embedder's crop rule and flip switch
        when its manifest sets them (``extra["crop"]``, ``extra["flip_tta"]``: they change its vectors)."""
        parts: list[object] = [
            self.name,
            self.format,
            sorted(self.sha256.items()),
            sorted(self.thresholds.items()),
        ]
        view = {key: self.extra[key] for key in VECTOR_EXTRAS if key in self.extra}
        if view:  # (manifests without them keep the versions they always had)
            parts.append(view)
        payload = json.dumps(parts, sort_keys=True)
        return f"{self.name}@{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    def save(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data.pop("folder")
        target = self.folder / MANIFEST_NAME
        target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        return cls(**data, folder=folder)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float
    label: str = "head"


@runtime_checkable
class HeadDetector(Protocol):
    version: str

    def detect(self, image: Image.Image) -> list[Detection]:
        """Heads in an RGB image, best first, boxes in the image's pixels."""
        ...


@runtime_checkable
class Embedder(Protocol):
    version: str
    dim: int

    def embed(self, crops: list[Image.Image]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per RGB crop (horizontal-flip averaged unless the model's
        manifest turns it off)."""
        ...


@runtime_checkable
class Tagger(Protocol):
    version: str

    def tag(self, image: Image.Image) -> list[Tag]:
        """Tags above their category's threshold, best first; exactly one ``rating`` tag when the model has any."""
        ...


@dataclass(frozen=True)
class IdentifiedHead:
    """What a captioner may know about one head."""

    name: str  # a character name or results.UNKNOWN
    confidence: float


@runtime_checkable
class Captioner(Protocol):
    version: str

    def caption(self, image: Image.Image, heads: list[IdentifiedHead], tags: list[Tag]) -> str:
        """One sentence about the image, consistent with the identified heads and tags."""
        ...
