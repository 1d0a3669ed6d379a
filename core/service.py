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

from core.annotate import annotate, encode_png
from core.intake import decode_image
from core.jobs import BlobStore, JobStore, Requester
from core.kv import KeyValue
from core.pipeline import AnalysisPipeline
from core.result_cache import CachedAnalysis, ResultCache
from core.results import UNKNOWN, AnalysisResult
from core.settings import Settings
from core.store import AnalysisLogRecord, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisOutcome:
    result: AnalysisResult
    annotated_png: bytes
    refs: CachedAnalysis  # where result and annotated image are stored as blobs
    cached: bool  # answered from the cache: no model ran
    logged: bool  # False when this job id had already completed (a redelivered duplicate)


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
        self.blobs = BlobStore(kv, settings.blob_ttl_s)
        self.jobs = JobStore(kv, settings.job_ttl_s)
        self.cache = ResultCache(kv, self.blobs, settings.result_cache_ttl_s)
        self._pipeline_factory = pipeline_factory or (lambda: AnalysisPipeline.from_settings(settings, store))
        self._pipeline: AnalysisPipeline | None = None
        self._lock = threading.Lock()

    @property
    def pipeline(self) -> AnalysisPipeline:
        """Models are loaded on first use, once per process (never in a Celery parent before fork)."""
        with self._lock:
            if self._pipeline is None:
                started = time.perf_counter()
                self._pipeline = self._pipeline_factory()
                log.info("models loaded in %.1f s", time.perf_counter() - started)
            return self._pipeline

    def fingerprint(self) -> str:
        fingerprint = self.pipeline.fingerprint()
        self.cache.publish_fingerprint(fingerprint)
        return fingerprint

    def analyze(
        self, data: bytes, *, top_n: int, requester: Requester | None = None, job_id: str | None = None
    ) -> AnalysisOutcome:
        """Analyse posted bytes. Raises :class:`core.intake.IntakeError` for bad input (nothing is stored)."""
        started = time.perf_counter()
        decoded = decode_image(
            data, max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )
        requester = requester or Requester()
        job_id = job_id or uuid.uuid4().hex
        fingerprint = self.fingerprint()
        cached = self.cache.get(decoded.sha256, fingerprint, top_n)
        if cached is not None:
            result = AnalysisResult.from_dict(json.loads(self.blobs.get(cached.result_blob)))
            png = self.blobs.get(cached.annotated_blob)
            log.info("analysis %s answered from cache (image %s)", job_id, decoded.sha256[:12])
            return AnalysisOutcome(
                result, png, cached, cached=True, logged=self._log(job_id, result, requester, started)
            )
        self.cache.count_pipeline_run()
        result = self.pipeline.analyze(decoded.image, decoded.sha256, top_n=top_n, fingerprint=fingerprint)
        png = encode_png(annotate(decoded.image, result))
        refs = CachedAnalysis(
            result_blob=self.blobs.put(json.dumps(result.to_dict(), ensure_ascii=False).encode()),
            annotated_blob=self.blobs.put(png),
        )
        if not result.degraded:  # a degraded answer is not worth reusing: the next try may do better
            self.cache.put(decoded.sha256, fingerprint, top_n, refs)
        logged = self._log(job_id, result, requester, started)
        log.info(
            "analysis %s done: image %s, %d heads, %.0f ms%s",
            job_id,
            decoded.sha256[:12],
            len(result.heads),
            (time.perf_counter() - started) * 1000,
            " (degraded)" if result.degraded else "",
        )
        return AnalysisOutcome(result, png, refs, cached=False, logged=logged)

    def _log(self, job_id: str, result: AnalysisResult, requester: Requester, started: float) -> bool:
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
        return self.store.log_analysis(record)
