"""Through the queue: a real Redis and real Celery worker processes (no mocks of either)."""

from __future__ import annotations

import io
import time

import pytest

from core.datasets.synth import render_scene
from core.storage.jobs import JobStatus, Requester
from core.storage.result_cache import ResultCache
from core.storage.store import Store
from tests.conftest import wait_for

pytestmark = pytest.mark.queue


def scene_png(seed: int, **kwargs: object) -> tuple[bytes, object]:
    scene = render_scene(seed, **kwargs)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return buffer.getvalue(), scene


def in_process(settings, data: bytes):  # type: ignore[no-untyped-def]
    from core.analysis.service import AnalysisService
    from core.storage.kv import MemoryKV

    return AnalysisService(settings, MemoryKV(), Store.from_settings(settings)).analyze(data, top_n=5).result


def without_timings(result: dict) -> dict:  # type: ignore[type-arg]
    return {k: v for k, v in result.items() if k != "timings_ms"}


def make_client(settings):  # type: ignore[no-untyped-def]
    from workers.client import QueueClient

    return QueueClient(settings)


def test_enqueue_then_result_then_duplicate_from_cache(redis_kv, model_env, model_settings, start_worker):
    worker = start_worker(model_env)
    client = make_client(model_settings)
    data, _ = scene_png(9_100_001, characters=["aoi"])
    done = client.analyze(data, requester=Requester("test", "chat-1", "user-1"), timeout_s=180)
    assert done.job.status is JobStatus.DONE, worker.output()[-3000:]
    assert not done.job.cached
    # the worker returns exactly what the pipeline computes in process, with the same models and gallery
    expected = in_process(model_settings, data)
    assert len(done.result.heads) == 1
    assert without_timings(done.result.to_dict()) == without_timings(expected.to_dict())
    assert done.reply_image.startswith(b"\xff\xd8\xff") and done.annotated_png is None
    # the message carried only the job id: the image is in the blob store under its hash
    assert client.blobs.get(done.job.params["image"]) == data

    cache = ResultCache(redis_kv, client.blobs, 3600)
    runs_before = cache.pipeline_runs()
    again = client.analyze(data, requester=Requester("test", "chat-2", "user-2"), timeout_s=60)
    assert again.job.cached
    assert again.result.to_dict() == done.result.to_dict()
    assert cache.pipeline_runs() == runs_before, "a model ran for a duplicate image"


def test_bad_input_is_refused_before_enqueue(redis_kv, model_settings):
    from core.vision.intake import NotAnImage

    client = make_client(model_settings)
    with pytest.raises(NotAnImage):
        client.submit_analysis(b"definitely not an image", requester=Requester("test"))
    assert not any(key.startswith(b"anibot:job:") for key in redis_kv.client.keys("*"))


def test_worker_killed_mid_task_is_redelivered_and_completes_once(
    redis_kv, model_env, model_settings, start_worker
):
    # a short visibility timeout makes Redis hand the unacknowledged task to another worker soon
    slow = {
        **model_env,
        "ANIBOT_TEST_TASK_DELAY_S": "4",
        # room for a cold model load on a loaded machine: a second attempt that outlives the soft limit or
        # the visibility timeout is itself redelivered (CI once saw 3 attempts with 10 s / 11 s)
        "ANIBOT_TASK_TIME_LIMIT_S": "30",
        "ANIBOT_VISIBILITY_TIMEOUT_S": "32",
        "ANIBOT_REDELIVERY_CHECK_S": "2",
    }
    first = start_worker(slow)
    client = make_client(model_settings)
    data, _ = scene_png(9_100_002)
    job = client.submit_analysis(data, requester=Requester("test"))
    assert wait_for(lambda: client.jobs.require(job.id).status is JobStatus.RUNNING, 120), first.output()[
        -3000:
    ]
    first.kill()  # SIGKILL to the parent and its pool child, mid-task

    second = start_worker(slow)
    finished = client.wait(job.id, timeout_s=150)
    assert finished.status is JobStatus.DONE, second.output()[-3000:]
    assert finished.attempts == 2, second.output()[-3000:]
    store = Store(model_settings.sqlalchemy_url)
    assert store.analysis_count(job_id=job.id) == 1


def test_a_job_whose_worker_dies_on_every_attempt_fails_then_the_next_is_served(
    redis_kv, model_env, model_settings, start_worker
):
    """A poison picture: the worker child is SIGKILLed on every attempt (a fault point keyed by the picture's
    hash); after ANIBOT_MAX_ATTEMPTS the job fails with a clear message, its message is acknowledged, and the
    same worker serves the next picture."""
    import hashlib

    from workers.tasks import poison_message

    poison, _ = scene_png(9_100_003)
    healthy, _ = scene_png(9_100_004, characters=["aoi"])
    worker = start_worker(
        {**model_env, "ANIBOT_TEST_CRASH_AT": f"analyze.image:{hashlib.sha256(poison).hexdigest()}"}
    )
    client = make_client(model_settings)
    job = client.submit_analysis(poison, requester=Requester("test", "chat-p", "user-p"))
    failed = client.wait(job.id, timeout_s=180)
    assert failed.status is JobStatus.FAILED, worker.output()[-3000:]
    assert failed.error is not None and failed.error.code == "worker_lost"
    assert failed.error.message == poison_message(model_settings.max_attempts)
    assert failed.attempts == model_settings.max_attempts == 3
    assert worker.output().count("fault point analyze.image:") == 3

    served = client.analyze(healthy, requester=Requester("test", "chat-p", "user-p"), timeout_s=180)
    assert served.job.status is JobStatus.DONE, worker.output()[-3000:]
    assert len(served.result.heads) == 1
    # nothing left waiting or unacknowledged: the poison message was acknowledged, not parked
    assert client.backlog("gpu") == 0
    # (the served job is marked done just before its task returns and is acknowledged: give that a moment)
    assert wait_for(lambda: redis_kv.client.hlen("unacked") == 0, 15), redis_kv.client.hgetall("unacked")
    assert Store(model_settings.sqlalchemy_url).analysis_count(job_id=job.id) == 0


def test_the_front_end_checks_the_header_only_and_the_worker_decodes(
    redis_kv, model_env, model_settings, start_worker
):
    """A picture whose header is sound but whose pixel data is damaged is accepted by the front-end (which reads
    no pixel) and refused by the worker that decodes it: a clear corrupt_image, nothing analysed."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 5000, 8, 2, 0, 0, 0))  # 40 MP claimed
    damaged = (
        b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")
    )
    client = make_client(model_settings)
    job = client.submit_analysis(damaged, requester=Requester("test", "chat-h", "user-h"))
    assert job.status is JobStatus.QUEUED  # accepted from its header: format PNG, 8000 x 5000, 1 frame
    worker = start_worker(model_env)
    failed = client.wait(job.id, timeout_s=180)
    assert failed.status is JobStatus.FAILED, worker.output()[-3000:]
    assert failed.error is not None and failed.error.code == "corrupt_image"


def test_redis_keeps_reply_sized_results_and_lets_the_input_go(
    redis_kv, model_env, model_settings, start_worker
):
    """Blobs in their own Redis (ANIBOT_BLOB_REDIS_URL): the broker's holds none; after the job the posted picture
    is gone (ANIBOT_INPUT_KEEP_S=0) and what stays is the result JSON and the reply-sized JPEG."""
    from core.storage.jobs import BLOB_PREFIX
    from tests.conftest import empty_redis

    blob_url = model_settings.redis_url.rsplit("/", 1)[0] + "/12"
    blob_kv = empty_redis(blob_url)
    env = {**model_env, "ANIBOT_BLOB_REDIS_URL": blob_url, "ANIBOT_INPUT_KEEP_S": "0"}
    settings = model_settings.model_copy(update={"blob_redis_url": blob_url, "input_keep_s": 0})
    try:
        worker = start_worker(env)
        client = make_client(settings)
        data, _ = scene_png(9_100_005, characters=["aoi"])
        done = client.analyze(data, requester=Requester("test", "chat-r", "user-r"), timeout_s=180)
        assert done.job.status is JobStatus.DONE, worker.output()[-3000:]
        assert not redis_kv.client.keys(
            BLOB_PREFIX + "*"
        )  # queues and job records only in the broker's Redis
        stored = {key.decode().removeprefix(BLOB_PREFIX) for key in blob_kv.client.keys(BLOB_PREFIX + "*")}
        assert stored == {done.job.result["json"], done.job.result["reply_image"]}
        assert done.job.params["image"] not in stored  # the posted picture went with the job
        assert blob_kv.get(BLOB_PREFIX + done.job.result["reply_image"]).startswith(b"\xff\xd8\xff")
    finally:
        blob_kv.client.flushdb()


def test_the_backlog_is_capped_and_queued_tasks_expire(redis_kv, model_env, model_settings, start_worker):
    """Past ANIBOT_MAX_BACKLOG nothing more is stored or sent; a task still queued after ANIBOT_TASK_EXPIRES_S
    is dropped by the worker and its job fails 'busy' (never left 'queued' forever); later jobs are served."""
    from workers.client import QueueFull
    from workers.tasks import EXPIRED_MESSAGE

    client = make_client(model_settings.model_copy(update={"max_backlog": 2, "task_expires_s": 1}))
    jobs = [
        client.submit_analysis(scene_png(9_100_010 + i)[0], requester=Requester("test")) for i in range(2)
    ]
    before = set(redis_kv.client.keys("*"))
    with pytest.raises(QueueFull):
        client.submit_analysis(scene_png(9_100_012)[0], requester=Requester("test"))
    assert set(redis_kv.client.keys("*")) == before  # refused: no blob, no job, no message

    time.sleep(1.5)  # both expire before any worker runs
    worker = start_worker(model_env)
    for job in jobs:
        failed = client.wait(job.id, timeout_s=120)
        assert failed.status is JobStatus.FAILED, worker.output()[-3000:]
        assert failed.error is not None and (failed.error.code, failed.error.message) == (
            "busy",
            EXPIRED_MESSAGE,
        )
    served = make_client(model_settings).analyze(
        scene_png(9_100_013, characters=["aoi"])[0], requester=Requester("test"), timeout_s=120
    )
    assert served.job.status is JobStatus.DONE
