"""Submitting work to the queue and reading results back: what the CLI's ``--queue`` mode and the bots use.

Light by design (no torch, no task code): the task is sent by its registered name, with only a job id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Celery

from core.settings import Settings
from core.storage.jobs import BlobStore, Job, JobError, JobStatus, JobStore, Requester
from core.storage.kv import RedisKV
from core.storage.result_cache import ResultCache
from core.vision.intake import inspect_image
from core.vision.results import AnalysisResult
from workers.celery_app import ANALYZE_TASK, CATALOG_TASK, TASK_QUEUES, make_app

log = logging.getLogger(__name__)

# what a broker connection Redis closed (a restart) raises when next used
STALE_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    kombu.exceptions.OperationalError,
)


class JobFailed(RuntimeError):
    def __init__(self, job: Job) -> None:
        error = job.error or JobError("internal", "Something went wrong.")
        super().__init__(f"job {job.id} failed: {error.code}: {error.message}")
        self.job = job
        self.error = error


class JobTimeout(TimeoutError):
    pass


class QueueFull(RuntimeError):
    """The queue already holds ``ANIBOT_MAX_BACKLOG`` messages: nothing was stored or sent."""

    user_message = (
        "I'm very busy right now: too many pictures are waiting. Please try again in a few minutes."
    )


# Tasks a user waits for: they expire when still queued after ANIBOT_TASK_EXPIRES_S, and their queues are capped.
# Admin work (the train queue) is neither: an admin's retraining may wait behind another.
BOUNDED_TASKS = frozenset({ANALYZE_TASK, CATALOG_TASK})


@dataclass(frozen=True)
class FinishedAnalysis:
    job: Job
    result: AnalysisResult
    reply_image: bytes  # the annotated picture, reply-sized JPEG
    annotated_png: bytes | None = None  # full size, when the job asked for it (``full_size``)


class QueueClient:
    def __init__(self, settings: Settings, celery_app: Celery | None = None) -> None:
        self.settings = settings
        self.kv = RedisKV(settings.redis_url)
        self.blobs = BlobStore.from_settings(settings, self.kv)
        self.jobs = JobStore(self.kv, settings.job_ttl_s)
        self.cache = ResultCache(self.kv, self.blobs, settings.result_cache_ttl_s)
        self.app = celery_app or make_app(settings)

    def submit_analysis(
        self, data: bytes, *, requester: Requester, top_n: int | None = None, full_size: bool = False
    ) -> Job:
        """Validate, store the bytes, and enqueue; a duplicate of a finished analysis is answered at once
        (unless ``full_size`` asks for the full-size annotated PNG too, which only a worker draws).

        Raises :class:`core.vision.intake.IntakeError` for bad input, before anything is stored or enqueued.
        """
        top_n = top_n or self.settings.top_n
        self._check_backlog(ANALYZE_TASK)
        # the header only (format, width x height, frames): a front-end never decodes pixels, workers do
        header = inspect_image(
            data, max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )
        image = self.blobs.put(data)
        params: dict[str, Any] = {"image": image, "top_n": top_n}
        if full_size:
            params["full_size"] = True
        job = self.jobs.create("analyze", requester, params=params)
        fingerprint = self.cache.published_fingerprint() if not full_size else None
        cached = self.cache.get(header.sha256, fingerprint, top_n) if fingerprint else None
        if cached is not None:
            self.blobs.expire_within(image, self.settings.input_keep_s)  # answered: kept only for a "Wrong?"
            return self.jobs.update(
                job,
                status=JobStatus.DONE,
                progress=1.0,
                cached=True,
                result={"json": cached.result_blob, "reply_image": cached.annotated_blob},
            )
        self._send(ANALYZE_TASK, job)
        return job

    def _check_backlog(self, task: str) -> None:
        queue = TASK_QUEUES[task]
        if task in BOUNDED_TASKS and self.backlog(queue) >= self.settings.max_backlog:
            raise QueueFull(f"queue {queue} holds {self.settings.max_backlog} or more messages")

    def _send(self, task: str, job: Job) -> None:
        expires = self.settings.task_expires_s if task in BOUNDED_TASKS else None
        self.app.send_task(task, args=[job.id], queue=TASK_QUEUES[task], expires=expires)

    def submit_task(
        self,
        task: str,
        kind: str,
        *,
        requester: Requester,
        params: dict[str, Any],
        images: Sequence[bytes] = (),
    ) -> Job:
        """Enqueue ``task`` for a new job of ``kind``; ``images`` go to the blob store, their hashes into
        ``params["images"]`` (only ids and hashes travel in the message)."""
        self._check_backlog(task)
        if images:
            params = {**params, "images": [self.blobs.put(data) for data in images]}
        job = self.jobs.create(kind, requester, params=params)
        self._send(task, job)
        return job

    def result_json(self, job: Job) -> Any:
        """The JSON result a finished job left in the blob store."""
        if job.status is JobStatus.FAILED or job.result is None:
            raise JobFailed(job)
        return json.loads(self.blobs.get(job.result["json"]))

    def backlog(self, queue: str) -> int:
        """Messages waiting in ``queue`` (kombu keeps a Redis list per queue and priority step)."""
        client = self.kv.client
        keys = [queue, *(f"{queue}\x06\x16{step}" for step in range(1, 10))]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())

    def workers_for(self, queue: str, timeout_s: float = 1.0) -> int:
        """Live workers consuming ``queue`` (asks over the broker: takes up to ``timeout_s``).

        A Redis that restarted closed the broker connections pooled before: the first question on one fails
        with "Connection closed by server". Those connections are dropped and the question asked once more; a
        Redis still down raises as before."""
        try:
            replies = self.app.control.inspect(timeout=timeout_s).active_queues() or {}
        except STALE_CONNECTION_ERRORS as exc:
            log.info("asking for workers on %s: %s; asking again on a fresh connection", queue, exc)
            with self.app.connection_for_write() as connection:
                inspect = self.app.control.inspect(timeout=timeout_s, connection=connection)
                replies = inspect.active_queues() or {}
        return sum(any(q.get("name") == queue for q in queues) for queues in replies.values())

    def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        job = self.jobs.wait(job_id, timeout_s if timeout_s is not None else self.settings.job_wait_timeout_s)
        if not job.status.finished:
            raise JobTimeout(f"job {job_id} still {job.status} after waiting")
        return job

    def fetch_analysis(self, job: Job) -> FinishedAnalysis:
        if job.status is JobStatus.FAILED or job.result is None:
            raise JobFailed(job)
        result = AnalysisResult.from_dict(json.loads(self.blobs.get(job.result["json"])))
        full = job.result.get("annotated_png")
        reply = job.result.get("reply_image") or full  # jobs finished before reply pictures had only the PNG
        return FinishedAnalysis(
            job, result, self.blobs.get(reply or ""), self.blobs.get(full) if full else None
        )

    def analyze(
        self,
        data: bytes,
        *,
        requester: Requester,
        top_n: int | None = None,
        timeout_s: float | None = None,
        full_size: bool = False,
    ) -> FinishedAnalysis:
        """Submit and wait (blocking: async front-ends run this in a thread)."""
        started = time.monotonic()
        job = self.submit_analysis(data, requester=requester, top_n=top_n, full_size=full_size)
        left = (timeout_s if timeout_s is not None else self.settings.job_wait_timeout_s) - (
            time.monotonic() - started
        )
        return self.fetch_analysis(self.wait(job.id, max(left, 0.0)))
