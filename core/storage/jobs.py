"""Jobs (what was asked, by whom, how far it got) and blobs (image and result bytes), kept in a KeyValue store.

Front-ends put the posted bytes under their sha256 and enqueue only a job id; workers read the bytes back by hash.
Results are blobs too, so no image ever travels inside a queue message.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from core.settings import Settings
from core.storage.kv import KeyValue, RedisKV

BLOB_PREFIX = "anibot:blob:"
JOB_PREFIX = "anibot:job:"
DONE_PREFIX = "anibot:jobdone:"
RECENT_PREFIX = "anibot:jobs:"  # newest ids of each kind of job except analyses (there are too many)
RECENT_KEEP = 200
CANCEL_PREFIX = "anibot:jobcancel:"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED)


@dataclass(frozen=True)
class Requester:
    platform: str = "cli"
    chat_id: str | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class JobError:
    code: str  # e.g. "not_an_image", "blob_expired", "internal"
    message: str  # short, safe to show a user


@dataclass(frozen=True)
class Job:
    id: str
    kind: str  # "analyze", later "recommend", "reindex"
    status: JobStatus
    requester: Requester
    created_at: float
    updated_at: float
    params: dict[str, Any] = field(default_factory=dict)
    progress: float = 0.0
    attempts: int = 0
    cached: bool = False
    result: dict[str, str] | None = None  # blob references, e.g. {"json": sha, "annotated_png": sha}
    error: JobError | None = None
    detail: dict[str, Any] = field(
        default_factory=dict
    )  # e.g. {"stage": ..., "epoch": 3, "loss": 0.4, "eta_s": 80}

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Job:
        data = json.loads(raw)
        data["status"] = JobStatus(data["status"])
        data["requester"] = Requester(**data["requester"])
        data["error"] = JobError(**data["error"]) if data.get("error") else None
        return cls(**data)


class BlobNotFound(KeyError):
    """The blob expired or was never stored."""


class BlobStore:
    """Content-addressed bytes with a time to live: the key is the sha256 of the value.

    Blobs may live in a Redis of their own (``ANIBOT_BLOB_REDIS_URL``), one allowed to evict under memory pressure:
    a blob is always either found or reported missing (:class:`BlobNotFound`), never wrong."""

    def __init__(self, kv: KeyValue, ttl_s: int) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: Settings, kv: KeyValue) -> BlobStore:
        """Blobs in ``ANIBOT_BLOB_REDIS_URL`` when it names another Redis than ``kv``'s, else beside the jobs."""
        url = settings.blob_redis_url
        if url and isinstance(kv, RedisKV) and url != kv.url:
            return cls(RedisKV(url), settings.blob_ttl_s)
        return cls(kv, settings.blob_ttl_s)

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.kv.set(BLOB_PREFIX + digest, data, self.ttl_s)
        return digest

    def expire_within(self, digest: str, ttl_s: int) -> None:
        """Let a blob live at most ``ttl_s`` more seconds (0: delete it now); a correction's picture is kept by
        :meth:`keep` afterwards, never before."""
        if ttl_s <= 0:
            self.kv.delete(BLOB_PREFIX + digest)
        else:
            self.kv.expire_within(BLOB_PREFIX + digest, ttl_s)

    def get(self, digest: str) -> bytes:
        data = self.kv.get(BLOB_PREFIX + digest)
        if data is None:
            raise BlobNotFound(digest)
        return data

    def exists(self, digest: str) -> bool:
        return self.kv.exists(BLOB_PREFIX + digest)

    def keep(self, digest: str, ttl_s: int) -> bool:
        """Keep a blob for ``ttl_s`` from now (e.g. a corrected picture until an admin reviews it); False when
        it already expired."""
        data = self.kv.get(BLOB_PREFIX + digest)
        if data is None:
            return False
        self.kv.set(BLOB_PREFIX + digest, data, max(ttl_s, self.ttl_s))
        return True


class JobStore:
    def __init__(self, kv: KeyValue, ttl_s: int) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    def create(self, kind: str, requester: Requester, params: dict[str, Any] | None = None) -> Job:
        now = time.time()
        job = Job(
            id=uuid.uuid4().hex,
            kind=kind,
            status=JobStatus.QUEUED,
            requester=requester,
            created_at=now,
            updated_at=now,
            params=dict(params or {}),
        )
        self._save(job)
        if kind != "analyze":
            self.kv.push_recent(RECENT_PREFIX + kind, job.id.encode(), RECENT_KEEP, self.ttl_s)
        return job

    def recent(self, kinds: list[str], limit: int = 10) -> list[Job]:
        """The newest jobs of these kinds (not analyses), newest first; expired ones are skipped."""
        found = []
        for kind in kinds:
            for raw in self.kv.recent(RECENT_PREFIX + kind, limit):
                job = self.get(raw.decode())
                if job is not None:
                    found.append(job)
        return sorted(found, key=lambda job: job.created_at, reverse=True)[:limit]

    def get(self, job_id: str) -> Job | None:
        raw = self.kv.get(JOB_PREFIX + job_id)
        return Job.from_json(raw) if raw is not None else None

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise KeyError(f"job {job_id} not found (expired or never created)")
        return job

    def update(self, job: Job, **changes: Any) -> Job:
        updated = replace(job, updated_at=time.time(), **changes)
        self._save(updated)
        if updated.status.finished:
            self.kv.notify(DONE_PREFIX + job.id, self.ttl_s)
        return updated

    def request_cancel(self, job_id: str) -> None:
        """Ask a queued or running job to stop; the worker checks between steps (see :meth:`cancel_requested`)."""
        self.kv.set(CANCEL_PREFIX + job_id, b"1", self.ttl_s)

    def cancel_requested(self, job_id: str) -> bool:
        return self.kv.exists(CANCEL_PREFIX + job_id)

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 1.0) -> Job:
        """Block until the job is finished or the timeout passes; returns the job as it then stands."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.require(job_id)
            left = deadline - time.monotonic()
            if job.status.finished or left <= 0:
                return job
            self.kv.wait(DONE_PREFIX + job_id, min(poll_s, left))

    def _save(self, job: Job) -> None:
        self.kv.set(JOB_PREFIX + job.id, job.to_json(), self.ttl_s)
