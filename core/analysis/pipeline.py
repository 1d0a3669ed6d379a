"""The analysis pipeline: detect heads, identify each, tag the image, caption it.

Each stage is a model slot behind a small interface (:mod:`core.vision.slots.base`). A stage that fails, or whose
model is missing, degrades the result (``AnalysisResult.degraded`` says which and why); it never sinks the job.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from PIL import Image

from core.characters.fusion import CropEvidence, FusionParams, fuse
from core.characters.gallery import Calibration, Gallery, GalleryItem
from core.characters.gallery_versions import GalleryCorrupt, GalleryVersions
from core.settings import Settings
from core.storage.kv import KeyValue
from core.storage.shared_store import SharedStore
from core.storage.store import Store
from core.vision.crops import crop_rule_of, embedder_crop_region  # queries are cut like references
from core.vision.results import (
    LOAD_FAILED,
    NOT_INSTALLED,
    SOURCE_GALLERY,
    STAGE_FAILED,
    UNKNOWN,
    AnalysisResult,
    Box,
    Candidate,
    Head,
    StageFailure,
    Tag,
)
from core.vision.slots.base import (
    Captioner,
    Detection,
    Embedder,
    HeadDetector,
    IdentifiedHead,
    Manifest,
    Tagger,
)
from core.vision.slots.registry import (
    SLOTS,
    ModelNotInstalled,
    active_manifest,
    load_slot,
    models_fingerprint,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_IDENTIFY_THRESHOLD = 0.5
# a tagger manifest's extra["character_names"]: "alone" (its character tags may name a head by themselves: WD
# taggers, starters trained with real pictures) or "confirm" (they only confirm the gallery's best guess)
CHARACTER_NAMES_ALONE = "alone"
CHARACTER_NAMES_CONFIRM = "confirm"


@dataclass
class LoadedSlots:
    """The slot implementations of one process; a slot that could not be loaded is None, with its reason."""

    detector: HeadDetector | None = None
    embedder: Embedder | None = None
    tagger: Tagger | None = None
    captioner: Captioner | None = None
    manifests: dict[str, Manifest] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: Settings) -> LoadedSlots:
        slots = cls()
        for slot in SLOTS:
            try:
                manifest = active_manifest(settings.models_dir, slot)
                if manifest is None:
                    raise ModelNotInstalled(slot, settings.models_dir)
                setattr(slots, slot, load_slot(manifest, settings))
                slots.manifests[slot] = manifest
            except Exception as exc:  # a broken model degrades its stage, reported in every result
                log.warning(
                    "model slot %s unavailable: %s", slot, exc
                )  # the details stay in the worker's log
                slots.load_errors[slot] = NOT_INSTALLED if isinstance(exc, ModelNotInstalled) else LOAD_FAILED
        return slots


class GalleryProvider:
    """The faiss gallery of the active embedder, as the index jobs publish it in the shared folder.

    Every call asks which version is current (one Redis GET) and loads it when it changed, so a worker picks up
    what admins taught on its next job, without a restart. Before any version was published for this embedder
    (a fresh install, or a model just promoted), the gallery is built in memory from the store's references.
    """

    def __init__(
        self, store: Store, embedder_version: str, dim: int, versions: GalleryVersions | None = None
    ) -> None:
        self.store = store
        self.embedder_version = embedder_version
        self.dim = dim
        self.versions = versions
        self._lock = threading.Lock()
        self._gallery: Gallery | None = None
        self._key: tuple[str, int] | None = None

    def _wanted(self) -> tuple[str, int]:
        if self.versions is not None:
            published = self.versions.announced(self.embedder_version)
            if published is not None:
                return "published", published
        return "store", self.store.gallery_version()

    def current(self) -> tuple[Gallery, int]:
        key = self._wanted()
        with self._lock:
            if self._gallery is None or key != self._key:
                self._gallery = self._load(key)
                self._key = key
            return self._gallery, key[1]

    def _load(self, key: tuple[str, int]) -> Gallery:
        source, version = key
        if source == "published" and self.versions is not None:
            try:
                gallery = self.versions.load(self.embedder_version, version)
                log.info("gallery version %d loaded: %d references", version, len(gallery))
                return gallery
            except (OSError, ValueError, GalleryCorrupt) as exc:
                if self._gallery is not None:  # keep serving what this process has
                    log.error("gallery version %d unreadable, keeping %s: %s", version, self._key, exc)
                    return self._gallery
                log.error("gallery version %d unreadable, building from the store: %s", version, exc)
        entries = self.store.gallery(self.embedder_version)
        if entries:
            gallery = Gallery(
                np.stack([e.embedding for e in entries]).astype("float32"),
                [GalleryItem(e.name, e.series, e.image_sha256) for e in entries],
                version=f"s{version}",
            )
        else:
            gallery = Gallery.empty(self.dim, version=f"s{version}")
        log.info("gallery built from the store (version %s): %d references", version, len(entries))
        return gallery


def _context_square(box: Box, size: tuple[int, int], grow: float = 1.6) -> tuple[int, int, int, int]:
    """A square around ``box``'s centre, ``grow`` times its longer side, inside the image: the head with some hair
    and shoulders, as a tagger sees a character."""
    side = max(box.width, box.height) * grow
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    w, h = size
    x1, y1 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    x2, y2 = min(w, round(cx + side / 2)), min(h, round(cy + side / 2))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


@dataclass(frozen=True)
class IdentifyParams:
    threshold: float
    calibration: Calibration


class AnalysisPipeline:
    def __init__(
        self, slots: LoadedSlots, gallery: GalleryProvider | None, identify: IdentifyParams, models_fp: str
    ) -> None:
        self.slots = slots
        self.gallery = gallery
        self.identify = identify
        self.models_fp = models_fp

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, kv: KeyValue | None = None) -> AnalysisPipeline:
        slots = LoadedSlots.load(settings)
        versions = GalleryVersions(SharedStore(settings.shared_path), kv, keep=settings.gallery_keep_versions)
        gallery = None
        threshold, calibration = (
            DEFAULT_IDENTIFY_THRESHOLD,
            Calibration(scale=10.0, shift=DEFAULT_IDENTIFY_THRESHOLD),
        )
        if slots.embedder is not None:
            manifest = slots.manifests["embedder"]
            gallery = GalleryProvider(store, slots.embedder.version, slots.embedder.dim, versions)
            threshold = manifest.thresholds.get("identify", threshold)
            calib = manifest.extra.get("calibration") or {}
            calibration = Calibration(
                scale=float(calib.get("scale", 10.0)), shift=float(calib.get("shift", threshold))
            )
        if settings.identify_threshold is not None:
            threshold = settings.identify_threshold
        return cls(
            slots, gallery, IdentifyParams(threshold, calibration), models_fingerprint(settings.models_dir)
        )

    @property
    def embedder_version(self) -> str:
        return self.slots.embedder.version if self.slots.embedder is not None else ""

    def fingerprint(self) -> str:
        """Versions of every model and of the gallery: part of the result cache key."""
        gallery_version = self.gallery.current()[0].version if self.gallery else "none"
        raw = f"{self.models_fp}|gallery={gallery_version}|{sorted(self.slots.load_errors)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:20]

    def analyze(
        self,
        image: Image.Image,
        image_sha256: str,
        *,
        top_n: int,
        fingerprint: str | None = None,
        embeddings_out: list[np.ndarray] | None = None,
    ) -> AnalysisResult:
        """Run every stage; ``fingerprint`` may be passed when the caller already computed it. With
        ``embeddings_out``, the head embeddings are appended to it (one per head, for the analysis log)."""
        timings: dict[str, float] = {}
        failures: list[StageFailure] = []

        def stage(name: str, slot_name: str, run: Callable[[], T], default: T) -> T:
            if getattr(self.slots, slot_name) is None:
                reason = self.slots.load_errors.get(slot_name, NOT_INSTALLED)
                failures.append(StageFailure(name, reason))
                return default
            start = time.perf_counter()
            try:
                return run()
            except Exception:  # degrade, never sink the job
                log.exception("stage %s failed on image %s", name, image_sha256[:12])
                failures.append(StageFailure(name, STAGE_FAILED))  # never exception text or paths
                return default
            finally:
                timings[name] = round((time.perf_counter() - start) * 1000, 2)

        fingerprint = fingerprint or self.fingerprint()
        # the gallery once per analysis (one Redis GET), read inside the stages that need it, so a failure degrades them
        gallery_now = functools.cache(lambda: self.gallery.current()[0] if self.gallery is not None else None)
        detections: list[Detection] = stage(
            "detector", "detector", lambda: self.slots.detector.detect(image), []
        )  # type: ignore[union-attr]
        unidentified = [Head(box=d.box, detection_score=d.score) for d in detections]
        heads = (
            stage(
                "identify",
                "embedder",
                lambda: self._identify(image, detections, top_n, gallery_now(), embeddings_out),
                unidentified,
            )
            if detections
            else []
        )
        tags: list[Tag] = stage("tagger", "tagger", lambda: self.slots.tagger.tag(image), [])  # type: ignore[union-attr]
        if heads and any(t.category == "character" for t in tags):
            named = heads
            heads = stage(
                "fusion", "tagger", lambda: self._fuse(image, named, tags, top_n, gallery_now()), named
            )
        known = [IdentifiedHead(h.name, h.confidence) for h in heads]
        caption = stage(
            "captioner", "captioner", lambda: self.slots.captioner.caption(image, known, tags), None
        )  # type: ignore[union-attr]
        rating = next((t.name for t in tags if t.category == "rating"), None)
        return AnalysisResult(
            image_sha256=image_sha256,
            width=image.width,
            height=image.height,
            heads=tuple(heads),
            tags=tuple(tags),
            rating=rating,
            caption=caption,
            fingerprint=fingerprint,
            timings_ms=timings,
            degraded=tuple(failures),
        )

    def _fuse(
        self, image: Image.Image, heads: list[Head], tags: list[Tag], top_n: int, gallery: Gallery | None
    ) -> list[Head]:
        """The tagger's character tags fused with the gallery's answers (core.characters.fusion); in a picture of
        several heads the tagger also scores each head's crop (its box grown to a square with some context)."""
        tagger = self.slots.tagger
        crops: list[CropEvidence] | None = None
        scores_of = getattr(tagger, "tag_scores", None)
        if len(heads) > 1 and scores_of is not None:
            general = float(getattr(tagger, "thresholds", {}).get("general", 0.35))
            regions = [image.crop(_context_square(h.box, image.size)) for h in heads]
            crops = [CropEvidence(scores, general) for scores in scores_of(regions)]
        known = gallery.characters if gallery is not None else ()
        manifest = self.slots.manifests.get("tagger")
        alone = (
            manifest is None
            or manifest.extra.get("character_names", CHARACTER_NAMES_ALONE) == CHARACTER_NAMES_ALONE
        )
        params = FusionParams(top_n=max(1, top_n), tagger_alone=alone)
        return fuse(heads, tags, crops=crops, known=known, params=params)

    def _identify(
        self,
        image: Image.Image,
        detections: list[Detection],
        top_n: int,
        gallery: Gallery | None,
        embeddings_out: list[np.ndarray] | None = None,
    ) -> list[Head]:
        if not detections:
            return []
        assert self.slots.embedder is not None and gallery is not None
        rule = crop_rule_of(self.slots.embedder)
        crops = [image.crop(embedder_crop_region(d.box, image.size, rule)) for d in detections]
        embeddings = self.slots.embedder.embed(crops)
        if embeddings_out is not None:
            embeddings_out.extend(np.asarray(embeddings, dtype=np.float32))
        found = gallery.identify(
            embeddings, top_n=top_n, threshold=self.identify.threshold, calibration=self.identify.calibration
        )
        heads = []
        for det, ident in zip(detections, found, strict=True):
            candidates = tuple(
                Candidate(c.name, c.series, c.confidence, c.similarity) for c in ident.candidates
            )
            named = bool(ident.name) and ident.name != UNKNOWN
            heads.append(
                Head(
                    box=det.box,
                    detection_score=float(det.score),
                    candidates=candidates,
                    name=ident.name if named else UNKNOWN,
                    confidence=float(ident.confidence),
                    series=candidates[0].series if named and candidates else "",
                    source=SOURCE_GALLERY if named else "",
                )
            )
        return heads
