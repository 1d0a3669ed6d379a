"""The analysis task in process (Celery's eager apply): what a delivery counts as an attempt."""

from __future__ import annotations

import redis.exceptions

from core.analysis.service import AnalysisService
from core.settings import Settings
from core.storage.jobs import BlobNotFound, JobStatus, Requester
from core.storage.kv import MemoryKV
from core.storage.store import Store
from workers import runtime, tasks


def test_a_redis_outage_waited_out_in_process_is_one_attempt_not_several(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'anibot.db'}", max_attempts=3)
    service = AnalysisService(
        settings, MemoryKV(), Store.from_settings(settings), pipeline_factory=lambda: None
    )  # type: ignore[arg-type,return-value]
    monkeypatch.setattr(runtime, "service", lambda: service)
    job = service.jobs.create("analyze", Requester(), {"image": "0" * 64})
    calls = []

    def blob_after_three_outages(digest: str) -> bytes:  # Redis down three times, then the blob has expired
        calls.append(digest)
        if len(calls) <= 3:
            raise redis.exceptions.ConnectionError("Redis restarting")
        raise BlobNotFound(digest)

    monkeypatch.setattr(service.blobs, "get", blob_after_three_outages)
    outcome = tasks.analyze.apply(args=[job.id]).get()

    assert len(calls) == 4  # the task ran again in process after each outage
    finished = service.jobs.require(job.id)
    # one delivery, one attempt: the outages neither counted as dead workers nor failed it as a poison picture
    assert finished.attempts == 1
    assert (
        outcome == "failed" and finished.status is JobStatus.FAILED and finished.error.code == "blob_expired"
    )
