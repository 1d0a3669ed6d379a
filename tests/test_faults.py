"""Faults survived: Redis restarted under a running bot and worker, PostgreSQL restarted under load, a burst of
API requests. Real servers (each test starts its own Redis or PostgreSQL on a free loopback port, so killing
it never disturbs the shared ones), a real Celery worker process, the real command layer and REST API."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.invocation import IncomingImage, Invocation
from bot.replies import Reply, ReplyKind
from core.datasets.synth import render_scene
from core.storage.jobs import JOB_PREFIX, Job, JobStatus
from core.storage.store import Store
from scripts.fault_servers import RedisServer, ServerMissing
from tests.conftest import BOT_ADMINS, WorkerProcess, fresh_id, wait_for

pytestmark = pytest.mark.queue

ROOMY = {  # limits out of the way, except where a test is about them
    "rate_user_burst": 100,
    "rate_user_per_min": 600.0,
    "rate_chat_burst": 100,
    "rate_chat_per_min": 600.0,
}
# a worker that redelivers quickly what a lost connection left unacknowledged
QUICK_REDELIVERY = {
    "ANIBOT_TASK_TIME_LIMIT_S": "30",
    "ANIBOT_VISIBILITY_TIMEOUT_S": "35",
    "ANIBOT_REDELIVERY_CHECK_S": "2",
}


def scene_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    render_scene(seed).image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(data: bytes) -> IncomingImage:
    async def fetch() -> bytes:
        return data

    return IncomingImage(fetch, size=len(data), filename="scene.png")


def invocation(*images: IncomingImage, args: str = "") -> Invocation:
    return Invocation(platform="test", chat_id=fresh_id(), user_id=fresh_id(), args=args, images=images)


def layer_settings(env: dict[str, str], **overrides: object):  # type: ignore[no-untyped-def]
    from core.settings import Settings

    values: dict[str, object] = {
        "models_dir": Path(env["ANIBOT_MODELS_DIR"]),
        "data_dir": Path(env["ANIBOT_DATA_DIR"]),
        "database_url": env["ANIBOT_DATABASE_URL"],
        "redis_url": env["ANIBOT_REDIS_URL"],
        "admin_ids": BOT_ADMINS,
        "unavailable_after_s": 8.0,
        "job_wait_timeout_s": 90.0,
        **ROOMY,
    }
    return Settings(**{**values, **overrides})


def wait_for_worker(settings, worker: WorkerProcess, timeout_s: float = 120) -> None:  # type: ignore[no-untyped-def]
    from workers.client import QueueClient

    client = QueueClient(settings)
    if not wait_for(lambda: client.workers_for("gpu", timeout_s=0.5) > 0, timeout_s, interval_s=0.5):
        raise AssertionError("the worker did not come up:\n" + worker.output()[-3000:])


def job_records(redis_url: str) -> list[Job]:
    import redis

    client = redis.Redis.from_url(redis_url)
    return [Job.from_json(client.get(key)) for key in client.scan_iter(JOB_PREFIX + "*")]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path / "redis")
    except ServerMissing as exc:
        pytest.skip(str(exc))
    server.start()
    yield server
    server.stop()


# --- Redis restarted under a running bot and worker -----------------------------------------------------


@pytest.mark.timeout(240)
def test_redis_restarted_while_jobs_are_queued(own_redis, model_env, start_worker):
    """Redis is killed while four pictures are queued or running, and started again a few seconds later (its
    append-only file keeps what it acknowledged). While it is down the bot answers at once with a clear "busy";
    afterwards every queued picture is answered, none is analysed twice, and new pictures are served."""
    env = {
        **model_env,
        "ANIBOT_REDIS_URL": own_redis.url(),
        "ANIBOT_TEST_TASK_DELAY_S": "1.5",
        **QUICK_REDELIVERY,
    }
    settings = layer_settings(env)
    worker = start_worker(env, queues="gpu,cpu")
    wait_for_worker(settings, worker)
    from bot.layer import CommandLayer

    layer = CommandLayer.from_settings(settings)
    store = Store(env["ANIBOT_DATABASE_URL"])
    logged_before = store.analysis_count()
    warm = asyncio.run(
        layer.images(invocation(picture(scene_png(7_300_000))), explicit=True)
    )  # models loaded
    assert warm[0].kind is ReplyKind.RESULT, (warm, worker.output()[-3000:])
    pictures = [scene_png(7_300_001 + i) for i in range(4)]

    async def main() -> tuple[list[list[Reply]], list[tuple[str, float, list[Reply]]], list[Reply]]:
        acks: list[Reply] = []

        async def progress(reply: Reply) -> None:
            acks.append(reply)

        queued = [
            asyncio.create_task(layer.images(invocation(picture(data)), progress, explicit=True))
            for data in pictures
        ]
        await asyncio.to_thread(wait_for, lambda: len(acks) == len(pictures), 30)
        assert len(acks) == len(pictures), "the pictures were not all queued"
        # killed while the first picture is being analysed and the others wait in the queue
        assert await asyncio.to_thread(
            wait_for, lambda: any(j.status is JobStatus.RUNNING for j in job_records(own_redis.url())), 30
        ), worker.output()[-3000:]
        own_redis.kill()
        down: list[tuple[str, float, list[Reply]]] = []
        for what, call in (
            ("picture", lambda: layer.images(invocation(picture(scene_png(7_300_100))), explicit=True)),
            ("stats", lambda: layer.command(invocation(), "stats")),
            ("help", lambda: layer.command(invocation(), "help")),
        ):
            started = time.monotonic()
            replies = await asyncio.wait_for(call(), 30)
            down.append((what, time.monotonic() - started, replies))
        await asyncio.sleep(2)
        await asyncio.to_thread(own_redis.start)
        answered = await asyncio.wait_for(asyncio.gather(*queued), 150)
        await asyncio.to_thread(wait_for_worker, settings, worker, 60)  # reconnected: new pictures are served
        after = await asyncio.wait_for(
            layer.images(invocation(picture(scene_png(7_300_200))), explicit=True), 90
        )
        return answered, down, after

    answered, down, after = asyncio.run(main())
    log = worker.output()

    for what, seconds, replies in down:
        assert seconds < 15, f"{what} took {seconds:.1f} s while Redis was down"
        assert len(replies) == 1, (what, replies)
        if what == "help":  # needs no Redis at all
            assert replies[0].kind is ReplyKind.INFO, replies
        else:
            assert replies[0].kind is ReplyKind.REFUSAL and replies[0].code == "busy", (what, replies)
            assert "try again" in replies[0].text.lower()
    for replies in answered:
        assert len(replies) == 1
        assert replies[0].kind is ReplyKind.RESULT, (replies, log[-4000:])
    assert len(after) == 1 and after[0].kind is ReplyKind.RESULT, (after, log[-4000:])

    # none twice: each queued job finished once, logged once, and every picture ran the pipeline once
    job_ids = [replies[0].data["job_id"] for replies in answered]
    jobs = {job.id: job for job in job_records(own_redis.url())}
    for job_id in job_ids:
        assert jobs[job_id].status is JobStatus.DONE
        assert store.analysis_count(job_id=job_id) == 1
    assert (
        store.analysis_count() - logged_before == 1 + len(pictures) + 1
    )  # the warm-up, the four, the one after
    assert "had already been completed once" not in log
