"""Jobs, blobs, the result cache and the key-value layer, on Redis and in memory alike."""

from __future__ import annotations

import threading
import time

import pytest

from core.storage.jobs import BlobNotFound, BlobStore, JobError, JobStatus, JobStore, Requester
from core.storage.kv import MemoryKV
from core.storage.result_cache import CachedAnalysis, ResultCache, cache_key


@pytest.fixture(params=["memory", "redis"])
def kv(request):  # type: ignore[no-untyped-def]
    if request.param == "memory":
        return MemoryKV()
    return request.getfixturevalue("redis_kv")


def test_blob_is_content_addressed_and_expires(kv):
    blobs = BlobStore(kv, ttl_s=60)
    digest = blobs.put(b"image bytes")
    assert len(digest) == 64 and blobs.get(digest) == b"image bytes"
    with pytest.raises(BlobNotFound):
        blobs.get("0" * 64)


def test_job_lifecycle_and_wait_wakes_on_finish(kv):
    jobs = JobStore(kv, ttl_s=60)
    job = jobs.create("analyze", Requester("discord", "c1", "u1"), params={"image": "ab" * 32, "top_n": 5})
    assert jobs.require(job.id).status is JobStatus.QUEUED
    running = jobs.update(job, status=JobStatus.RUNNING, attempts=1)

    def finish() -> None:
        time.sleep(0.3)
        jobs.update(
            running, status=JobStatus.FAILED, error=JobError("not_an_image", "That is not a picture.")
        )

    threading.Thread(target=finish).start()
    started = time.monotonic()
    finished = jobs.wait(job.id, timeout_s=10, poll_s=5)
    assert time.monotonic() - started < 3, "wait() did not wake on the done signal"
    assert finished.status is JobStatus.FAILED and finished.error == JobError(
        "not_an_image", "That is not a picture."
    )
    assert finished.requester == Requester("discord", "c1", "u1") and finished.attempts == 1


def test_wait_times_out_on_an_unfinished_job(kv):
    jobs = JobStore(kv, ttl_s=60)
    job = jobs.create("analyze", Requester())
    assert jobs.wait(job.id, timeout_s=0.3).status is JobStatus.QUEUED


def test_result_cache_key_and_expired_blobs(kv):
    blobs = BlobStore(kv, ttl_s=60)
    cache = ResultCache(kv, blobs, ttl_s=60)
    entry = CachedAnalysis(blobs.put(b"{}"), blobs.put(b"png"))
    cache.put("a" * 64, "fp1", 5, entry)
    assert cache.get("a" * 64, "fp1", 5) == entry
    assert cache.get("a" * 64, "fp2", 5) is None, "a new model or gallery version must miss"
    assert cache.get("a" * 64, "fp1", 3) is None
    assert cache_key("a" * 64, "fp1", 5) != cache_key("a" * 64, "fp2", 5)
    kv.delete("anibot:blob:" + entry.annotated_blob)
    assert cache.get("a" * 64, "fp1", 5) is None
    cache.publish_fingerprint("fp1")
    assert cache.published_fingerprint() == "fp1"
    cache.invalidate_fingerprint()
    assert cache.published_fingerprint() is None


def test_expire_within_only_shortens_and_zero_deletes(kv):
    blobs = BlobStore(kv, ttl_s=3600)
    digest = blobs.put(b"posted picture")
    blobs.expire_within(digest, 7200)  # never lengthens
    blobs.expire_within(digest, 1)
    assert blobs.get(digest) == b"posted picture"
    assert wait_until(lambda: not blobs.exists(digest), 5), "a blob outlived expire_within"
    other = blobs.put(b"another picture")
    blobs.expire_within(other, 0)
    assert not blobs.exists(other)
    kept = blobs.put(b"a corrected picture")
    blobs.expire_within(kept, 1)
    assert blobs.keep(kept, 3600)  # a "Wrong?" in time keeps it for review
    time.sleep(1.5)
    assert blobs.get(kept) == b"a corrected picture"


def wait_until(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_blobs_go_to_their_own_redis_when_one_is_set(redis_kv):
    from core.settings import Settings
    from tests.conftest import empty_redis

    blob_url = redis_kv.url.rsplit("/", 1)[0] + "/12"
    blob_kv = empty_redis(blob_url)
    try:
        settings = Settings(redis_url=redis_kv.url, blob_redis_url=blob_url)
        blobs = BlobStore.from_settings(settings, redis_kv)
        digest = blobs.put(b"picture bytes")
        assert blob_kv.get("anibot:blob:" + digest) == b"picture bytes"
        assert redis_kv.get("anibot:blob:" + digest) is None  # the broker's Redis holds no blob
        same = BlobStore.from_settings(Settings(redis_url=redis_kv.url), redis_kv)
        assert same.kv is redis_kv
        assert (
            BlobStore.from_settings(settings, MemoryKV()).kv is not blob_kv
        )  # the embedded mode stays in memory
    finally:
        blob_kv.client.flushdb()
