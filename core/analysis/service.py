"""One analysis, end to end: decode, reuse a cached answer or run the pipeline, annotate, store, log.

The embedded CLI calls this in process; the Celery task calls the very same code inside a worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.analysis.pipeline import AnalysisPipeline
from core.settings import Settings
from core.storage.jobs import BlobStore, JobStore, Requester
from core.storage.kv import KeyValue
from core.storage.result_cache import CachedAnalysis, ResultCache
from core.storage.store import AnalysisLogRecord, HeadLogRecord, Store
from core.vision.annotate import annotate, encode_png, reply_picture
from core.vision.intake import DecodedImage, decode_image
from core.vision.results import UNKNOWN, AnalysisResult
from core.vision.slots.registry import MODELS_ANNOUNCE_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisOutcome:
    result: AnalysisResult
    reply_image: bytes  # the annotated picture, reply-sized JPEG (what chats get, and what is stored)
    refs: CachedAnalysis  # where result and reply picture are stored as blobs
    cached: bool  # answered from the cache: no model ran
    logged: bool  # False when this job id had already completed (a redelivered duplicate)
    annotated_png: bytes | None = None  # the full-size annotated PNG, only when asked for (``full_size``)
    annotated_png_blob: str | None = None  # where it is stored, when stored


class AnalysisService:
    def __init__(
        self,
        settings: Settings,
        kv: KeyValue,
        store: Store,
        pipeline_factory: Callable[[], AnalysisPipeline] | None = None,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.store = store
        self.blobs = BlobStore.from_settings(settings, kv)
        self.jobs = JobStore(kv, settings.job_ttl_s)
        self.cache = ResultCache(kv, self.blobs, settings.result_cache_ttl_s)
        self._pipeline_factory = pipeline_factory or (
            lambda: AnalysisPipeline.from_settings(settings, store, kv)
        )
        self._pipeline: AnalysisPipeline | None = None
        self._models_announced: bytes | None = None
        self._lock = threading.Lock()

    @property
    def pipeline(self) -> AnalysisPipeline:
        """Models are loaded on first use, once per process (never in a Celery parent before fork), and loaded
        again when a promotion announces new models (see :func:`core.vision.slots.registry.announce_models`)."""
        announced = self.kv.get(MODELS_ANNOUNCE_KEY)
        with self._lock:
            if self._pipeline is None or announced != self._models_announced:
                started = time.perf_counter()
                reloading = self._pipeline is not None
                self._pipeline = self._pipeline_factory()
                self._models_announced = announced
                log.info(
                    "models %sloaded in %.1f s", "re" if reloading else "", time.perf_counter() - started
                )
            return self._pipeline

    def fingerprint(self, pipeline: AnalysisPipeline | None = None) -> str:
        fingerprint = (pipeline or self.pipeline).fingerprint()
        self.cache.publish_fingerprint(fingerprint)
        return fingerprint

    def decode(self, data: bytes) -> DecodedImage:
        """Posted bytes, safely decoded within this deployment's limits (raises :class:`IntakeError`)."""
        return decode_image(
            data, max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )

    def decode_blob(self, digest: str) -> DecodedImage:
        """A stored picture, decoded; raises :class:`core.storage.jobs.BlobNotFound` when it expired."""
        return self.decode(self.blobs.get(digest))

    def reply_picture(self, decoded: DecodedImage, result: AnalysisResult) -> bytes:
        s = self.settings
        return reply_picture(
            decoded.image, result, max_side=s.reply_image_max_side, max_bytes=s.reply_image_max_bytes
        )

    def analyze(
        self,
        data: bytes,
        *,
        top_n: int,
        requester: Requester | None = None,
        job_id: str | None = None,
        full_size: bool = False,
        store_full_size: bool = False,
    ) -> AnalysisOutcome:
        """Analyse posted bytes. Raises :class:`core.vision.intake.IntakeError` for bad input (nothing is stored).

        ``full_size`` also draws the annotated picture at full size as a PNG (the CLI, the API on request);
        ``store_full_size`` keeps it as a blob too. Only the reply-sized JPEG is cached."""
        started = time.perf_counter()
        decoded = self.decode(data)
        requester = requester or Requester()
        job_id = job_id or uuid.uuid4().hex
        pipeline = self.pipeline  # once per analysis: the models announcement is read once
        fingerprint = self.fingerprint(pipeline)
        cached = self.cache.get(decoded.sha256, fingerprint, top_n)
        if cached is not None:
            result = AnalysisResult.from_dict(json.loads(self.blobs.get(cached.result_blob)))
            reply = self.blobs.get(cached.annotated_blob)
            log.info("analysis %s answered from cache (image %s)", job_id, decoded.sha256[:12])
            return AnalysisOutcome(
                result,
                reply,
                cached,
                cached=True,
                logged=self._log(job_id, result, requester, started),
                **self._full_size(decoded, result, full_size, store_full_size),
            )
        self.cache.count_pipeline_run()
        embeddings: list[np.ndarray] = []
        result = pipeline.analyze(
            decoded.image, decoded.sha256, top_n=top_n, fingerprint=fingerprint, embeddings_out=embeddings
        )
        reply = self.reply_picture(decoded, result)
        refs = CachedAnalysis(
            result_blob=self.blobs.put(json.dumps(result.to_dict(), ensure_ascii=False).encode()),
            annotated_blob=self.blobs.put(reply),
        )
        if not result.degraded:  # a degraded answer is not worth reusing: the next try may do better
            self.cache.put(decoded.sha256, fingerprint, top_n, refs)
        logged = self._log(job_id, result, requester, started, embeddings, pipeline.embedder_version)
        log.info(
            "analysis %s done: image %s, %d heads, %.0f ms%s",
            job_id,
            decoded.sha256[:12],
            len(result.heads),
            (time.perf_counter() - started) * 1000,
            " (degraded)" if result.degraded else "",
        )
        return AnalysisOutcome(
            result,
            reply,
            refs,
            cached=False,
            logged=logged,
            **self._full_size(decoded, result, full_size, store_full_size),
        )

    def _full_size(
        self, decoded: DecodedImage, result: AnalysisResult, wanted: bool, store: bool
    ) -> dict[str, bytes | str | None]:
        if not (wanted or store):
            return {}
        png = encode_png(annotate(decoded.image, result))
        return {"annotated_png": png, "annotated_png_blob": self.blobs.put(png) if store else None}

    def _log(
        self,
        job_id: str,
        result: AnalysisResult,
        requester: Requester,
        started: float,
        embeddings: list[np.ndarray] | None = None,
        embedder: str = "",
    ) -> bool:
        """The analysis and each of its heads (box, candidates, the answer given, the embedding) in the store."""
        record = AnalysisLogRecord(
            job_id=job_id,
            image_sha256=result.image_sha256,
            platform=requester.platform,
            chat_id=requester.chat_id,
            user_id=requester.user_id,
            fingerprint=result.fingerprint,
            n_heads=len(result.heads),
            names=tuple(h.name for h in result.heads if h.name != UNKNOWN),
            duration_ms=(time.perf_counter() - started) * 1000,
        )
        vectors = embeddings if embeddings and len(embeddings) == len(result.heads) else None
        heads = [
            HeadLogRecord(
                head=index,
                box=(head.box.x1, head.box.y1, head.box.x2, head.box.y2),
                detection_score=head.detection_score,
                answer=head.name,
                confidence=head.confidence,
                candidates=tuple((c.name, c.series, round(c.confidence, 4)) for c in head.candidates),
                embedder=embedder if vectors is not None else "",
                embedding=vectors[index - 1] if vectors is not None else None,
            )
            for index, head in enumerate(result.heads, start=1)
        ]
        logged = self.store.log_analysis(record, heads)  # one transaction: the analysis with all its heads
        return logged
