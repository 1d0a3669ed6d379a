"""The analysis result: the one data shape shared by the pipeline, workers, CLI and bots.

Plain frozen dataclasses with ``to_dict``/``from_dict`` so a result crosses Redis as JSON and comes back typed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

UNKNOWN = "unknown"
RESULT_SCHEMA_VERSION = 1
# where a head's name came from: the gallery of taught references, the tagger's character tags, or both agreeing
SOURCE_GALLERY = "gallery"
SOURCE_TAGGER = "tagger"
SOURCE_BOTH = "both"
NAME_SOURCES = (SOURCE_GALLERY, SOURCE_TAGGER, SOURCE_BOTH)
# a named head below this confidence is shown as "not sure", its guesses behind a button: a confident wrong name is
# what users mind most. Chats choose their own (/settings sure); the annotated picture, drawn once for every chat,
# marks heads below this one
DEFAULT_SURE_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Box:
    """Pixel box in the original image: left, top, right, bottom."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    def crop_region(self) -> tuple[int, int, int, int]:
        """The pixel rectangle a head is cut with, everywhere (queries and references must be cut alike)."""
        return int(self.x1), int(self.y1), round(self.x2), round(self.y2)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0

    def as_list(self) -> list[float]:
        return [round(self.x1, 1), round(self.y1, 1), round(self.x2, 1), round(self.y2, 1)]


@dataclass(frozen=True)
class Candidate:
    """One possible identity of a head, best first in ``Head.candidates``."""

    name: str
    series: str
    confidence: float
    similarity: float  # cosine similarity to the gallery's best reference of this character (0 if none)
    source: str = SOURCE_GALLERY  # one of NAME_SOURCES


@dataclass(frozen=True)
class Head:
    box: Box
    detection_score: float
    # best first; may be empty when identification failed (see AnalysisResult.degraded)
    candidates: tuple[Candidate, ...] = ()
    # the answer shown to users: a character name or UNKNOWN (below the naming threshold: candidates hold the
    # best guesses)
    name: str = UNKNOWN
    confidence: float = 0.0
    series: str = ""
    source: str = ""  # one of NAME_SOURCES for a named head, "" for UNKNOWN

    def is_sure(self, threshold: float = DEFAULT_SURE_CONFIDENCE) -> bool:
        """Whether the head is shown with its name: named, with a confidence of at least ``threshold``."""
        return self.name != UNKNOWN and self.confidence >= threshold


@dataclass(frozen=True)
class Tag:
    name: str
    score: float
    category: str  # "general" | "character" | "rating"


NOT_INSTALLED = "model not installed"
LOAD_FAILED = "model could not be loaded"
STAGE_FAILED = "failed"
STAGE_REASONS = (NOT_INSTALLED, LOAD_FAILED, STAGE_FAILED)


@dataclass(frozen=True)
class StageFailure:
    """A stage that did not run, by name, with a short reason (one of ``STAGE_REASONS``): callers of the API see
    this, so never exception text or paths (those are in the worker's log)."""

    stage: str
    error: str


@dataclass(frozen=True)
class AnalysisResult:
    image_sha256: str
    width: int
    height: int
    heads: tuple[Head, ...]
    tags: tuple[Tag, ...]
    rating: str | None
    caption: str | None
    fingerprint: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    degraded: tuple[StageFailure, ...] = ()
    schema_version: int = RESULT_SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return not self.degraded

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for head, raw in zip(self.heads, data["heads"], strict=True):
            raw["box"] = head.box.as_list()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisResult:
        heads = tuple(
            Head(
                box=Box(*h["box"]),
                detection_score=h["detection_score"],
                candidates=tuple(Candidate(**c) for c in h["candidates"]),
                name=h["name"],
                confidence=h["confidence"],
                series=h.get("series", ""),
                source=h.get("source", ""),
            )
            for h in data["heads"]
        )
        return cls(
            image_sha256=data["image_sha256"],
            width=data["width"],
            height=data["height"],
            heads=heads,
            tags=tuple(Tag(**t) for t in data["tags"]),
            rating=data["rating"],
            caption=data["caption"],
            fingerprint=data["fingerprint"],
            timings_ms=dict(data.get("timings_ms", {})),
            degraded=tuple(StageFailure(**d) for d in data.get("degraded", [])),
            schema_version=data.get("schema_version", RESULT_SCHEMA_VERSION),
        )


# JSON schema of AnalysisResult.to_dict(), used by tests and published for API users.
RESULT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "anibot analysis result",
    "type": "object",
    "required": [
        "image_sha256",
        "width",
        "height",
        "heads",
        "tags",
        "rating",
        "caption",
        "fingerprint",
        "timings_ms",
        "degraded",
        "schema_version",
    ],
    "properties": {
        "image_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
        "heads": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["box", "detection_score", "candidates", "name", "confidence"],
                "properties": {
                    "series": {"type": "string"},
                    "source": {"enum": ["", *NAME_SOURCES]},
                    "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                    "detection_score": {"type": "number", "minimum": 0, "maximum": 1},
                    "name": {"type": "string", "minLength": 1},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "candidates": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "series", "confidence", "similarity"],
                            "properties": {
                                "name": {"type": "string"},
                                "series": {"type": "string"},
                                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                                "similarity": {"type": "number", "minimum": -1.0001, "maximum": 1.0001},
                                "source": {"enum": list(NAME_SOURCES)},
                            },
                        },
                    },
                },
            },
        },
        "tags": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "score", "category"],
                "properties": {
                    "name": {"type": "string"},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "category": {"enum": ["general", "character", "rating"]},
                },
            },
        },
        "rating": {"type": ["string", "null"]},
        "caption": {"type": ["string", "null"]},
        "fingerprint": {"type": "string"},
        "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        "degraded": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["stage", "error"],
                "properties": {
                    "stage": {"type": "string"},
                    "error": {
                        "type": "string",
                        "description": "not installed, could not be loaded, or failed",
                    },
                },
            },
        },
        "schema_version": {"const": RESULT_SCHEMA_VERSION},
    },
}
