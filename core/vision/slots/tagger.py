"""WD14-format taggers: SmilingWolf's wd-v1-4 / wd-*-tagger-v3, and the starter from core.learning.starter.tagger.

The format: ``model.onnx`` takes NHWC float32 pixels 0-255 in BGR order, the image padded to a white square
and resized to the model's input size (read from the ONNX input shape), and outputs ``(batch, n_tags)``
probabilities; ``selected_tags.csv`` (``tag_id,name,category,count``; category 0 general, 4 character,
9 rating) names the outputs in order.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.settings import Settings
from core.vision.results import Tag
from core.vision.slots.base import Manifest
from core.vision.slots.onnx_runtime import onnx_session, run_model

log = logging.getLogger(__name__)

CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4
CATEGORY_RATING = 9
CATEGORY_NAMES = {CATEGORY_GENERAL: "general", CATEGORY_CHARACTER: "character", CATEGORY_RATING: "rating"}
DEFAULT_THRESHOLDS = {"general": 0.35, "character": 0.85}
TAGS_COLUMNS = ("tag_id", "name", "category", "count")
DEFAULT_INPUT_SIZE = 448


@dataclass(frozen=True)
class TagDef:
    tag_id: int
    name: str
    category: int
    count: int


def read_selected_tags(path: Path) -> list[TagDef]:
    """The rows of a WD14 ``selected_tags.csv`` in output order (LF or CRLF line endings, optional BOM; blank
    rows skipped)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in TAGS_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: not a WD14 selected_tags.csv: missing column(s) {', '.join(missing)}")
    tags: list[TagDef] = []
    for line, row in enumerate(reader, start=2):
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a blank row (",,,"), as some published files have
        try:
            tags.append(
                TagDef(int(row["tag_id"]), row["name"].strip(), int(row["category"]), int(row["count"] or 0))
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}:{line}: malformed row {row!r}: {exc}") from None
    if not tags:
        raise ValueError(f"{path}: no tags")
    return tags


def write_selected_tags(path: Path, tags: list[TagDef]) -> Path:
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TAGS_COLUMNS)
        for t in tags:
            writer.writerow([t.tag_id, t.name, t.category, t.count])
    return Path(path)


def wd14_preprocess(image: Image.Image, size: int) -> np.ndarray:
    """``(1, size, size, 3)`` float32 BGR 0-255: transparency flattened on white, padded to a centred white
    square, resized (bicubic) to ``size``."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        image = canvas.convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    if w != h:
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - w) // 2, (side - h) // 2))
        image = square
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR
    return np.ascontiguousarray(array)[None]


class Wd14Tagger:
    """A WD14 ONNX tagger: general and character tags above their category's threshold, and one rating."""

    def __init__(
        self,
        onnx_path: Path,
        tags_csv: Path,
        *,
        version: str,
        thresholds: dict[str, float] | None = None,
        providers: list[str] | None = None,
        threads: int = 0,
        device: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:

        self.version = version
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.tags = read_selected_tags(tags_csv)
        self.session = onnx_session(
            onnx_path, providers=providers, threads=threads, device=device, cache_dir=cache_dir
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"{onnx_path}: expected an NHWC input (batch, H, W, 3), got shape {shape}")
        h, w = shape[1], shape[2]
        self.input_size = (
            int(h) if isinstance(h, int) else (int(w) if isinstance(w, int) else DEFAULT_INPUT_SIZE)
        )
        width = self.session.get_outputs()[0].shape[-1]
        if not isinstance(width, int):  # symbolic: ask the model
            width = self._run(np.full((1, self.input_size, self.input_size, 3), 255, np.float32)).shape[-1]
        if width != len(self.tags):
            raise ValueError(
                f"{onnx_path} outputs {width} scores but {tags_csv} lists {len(self.tags)} tags: "
                "the model and its selected_tags.csv do not belong together"
            )
        self._names = [t.name for t in self.tags]
        self._categories = np.array([t.category for t in self.tags])
        self._rating_idx = np.flatnonzero(self._categories == CATEGORY_RATING)
        batch = shape[0]
        # pictures per model call: a symbolic batch dimension takes any number, a fixed one that many
        self.max_batch = int(batch) if isinstance(batch, int) and batch > 0 else None

    @classmethod
    def from_manifest(cls, manifest: Manifest, settings: Settings) -> Wd14Tagger:
        return cls(
            manifest.path("onnx"),
            manifest.path("tags"),
            version=manifest.version,
            thresholds={**DEFAULT_THRESHOLDS, **manifest.thresholds},
            device=settings.device,
            threads=settings.onnx_threads,
        )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(run_model(self.session, {self.input_name: batch})[0], dtype=np.float32)

    def scores(self, image: Image.Image) -> np.ndarray:
        """The model's output for one image, in ``selected_tags.csv`` order."""
        return self._run(wd14_preprocess(image, self.input_size))[0]

    def scores_batch(self, images: list[Image.Image], batch_size: int = 16) -> np.ndarray:
        """``(len(images), n_tags)``: the model's output for several images, ``batch_size`` per model call (fewer
        when the model's batch dimension is fixed); row ``i`` is what :meth:`scores` gives for ``images[i]`` up to
        float rounding of the batched kernels."""
        if not images:
            return np.zeros((0, len(self.tags)), np.float32)
        step = max(1, min(batch_size, self.max_batch or batch_size))
        rows = []
        for start in range(0, len(images), step):
            chunk = [wd14_preprocess(image, self.input_size) for image in images[start : start + step]]
            rows.append(self._run(np.concatenate(chunk, axis=0)))
        return np.concatenate(rows, axis=0)

    def tag_scores(self, images: list[Image.Image], floor: float = 0.05) -> list[dict[str, float]]:
        """Per image, every general and character tag scoring at least ``floor``, by name: the evidence the
        character fusion reads from head crops."""
        keep = (self._categories == CATEGORY_GENERAL) | (self._categories == CATEGORY_CHARACTER)
        out = []
        for row in self.scores_batch(images):
            chosen = np.flatnonzero(keep & (row >= floor))
            out.append({self._names[i]: float(row[i]) for i in chosen})
        return out

    def probabilities(self, image: Image.Image) -> dict[str, float]:
        return dict(zip(self._names, self.scores(image).tolist(), strict=True))

    def tags_from_scores(self, scores: np.ndarray) -> list[Tag]:
        out: list[Tag] = []
        for category, key in ((CATEGORY_GENERAL, "general"), (CATEGORY_CHARACTER, "character")):
            threshold = self.thresholds[key]
            for i in np.flatnonzero((self._categories == category) & (scores >= threshold)):
                out.append(Tag(self._names[i], float(scores[i]), key))
        if self._rating_idx.size:
            best = int(self._rating_idx[np.argmax(scores[self._rating_idx])])
            out.append(Tag(self._names[best], float(scores[best]), "rating"))
        out.sort(key=lambda t: -t.score)
        return out

    def tag(self, image: Image.Image) -> list[Tag]:
        return self.tags_from_scores(self.scores(image))

    def __repr__(self) -> str:
        return f"Wd14Tagger({self.version}, {len(self.tags)} tags, input {self.input_size})"


TAGGER_LOADERS: dict[str, Any] = {"wd14-onnx": Wd14Tagger.from_manifest}
