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
from scripts.fault_servers import PostgresServer, RedisServer, ServerMissing
from tests.conftest import BOT_ADMINS, WorkerProcess, fresh_id, wait_for

pytestmark = pytest.mark.queue

ROOMY = {  # limits out of the way, except where a test is about them
    "rate_user_burst": 100,
    "rate_user_per_min": 600.0,
    "rate_chat_burst": 100,
    "rate_chat_per_min": 600.0,
}
# a worker that redelivers soon what a lost connection left unacknowledged (the time limit leaves room for a
# cold model load on a loaded 2-core machine)
QUICK_REDELIVERY = {
    "ANIBOT_TASK_TIME_LIMIT_S": "90",
    "ANIBOT_VISIBILITY_TIMEOUT_S": "95",
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


def test_asking_for_workers_after_a_redis_restart_uses_a_fresh_connection(own_redis):
    """The broker connection pooled before a Redis restart is dead: asking who consumes a queue must not fail on
    it (the first question after a restart raised "Connection closed by server" in CI), and a Redis that is
    down still raises."""
    from core.settings import Settings
    from workers.client import STALE_CONNECTION_ERRORS, QueueClient

    client = QueueClient(Settings(_env_file=None, redis_url=own_redis.url()))
    assert client.workers_for("gpu", timeout_s=0.3) == 0  # a pooled broker connection now exists
    own_redis.kill()
    own_redis.start()
    assert client.workers_for("gpu", timeout_s=0.3) == 0
    own_redis.kill()
    with pytest.raises(STALE_CONNECTION_ERRORS):  # kombu gives up after its few connection retries
        client.workers_for("gpu", timeout_s=0.3)


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
        if (
            what == "help" and replies[0].kind is ReplyKind.INFO
        ):  # answered without Redis (no rate limit taken)
            continue
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


@pytest.mark.timeout(180)
def test_redis_restarted_without_persistence_loses_queued_jobs_clearly(tmp_path, model_env, start_worker):
    """A Redis that keeps nothing across a restart (no append-only file) forgets the queued pictures: their users
    are told so in one sentence (code "lost", send it again), never an error id; the next picture is served."""
    try:
        server = RedisServer(tmp_path / "redis", durable=False)
    except ServerMissing as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        env = {
            **model_env,
            "ANIBOT_REDIS_URL": server.url(),
            "ANIBOT_TEST_TASK_DELAY_S": "2",
            **QUICK_REDELIVERY,
        }
        settings = layer_settings(env)
        worker = start_worker(env, queues="gpu")
        wait_for_worker(settings, worker)
        from bot.layer import CommandLayer

        layer = CommandLayer.from_settings(settings)

        async def main() -> tuple[list[list[Reply]], list[Reply]]:
            queued = [
                asyncio.create_task(
                    layer.images(invocation(picture(scene_png(7_350_001 + i))), explicit=True)
                )
                for i in range(3)
            ]
            assert await asyncio.to_thread(
                wait_for, lambda: any(j.status is JobStatus.RUNNING for j in job_records(server.url())), 60
            ), worker.output()[-3000:]
            await asyncio.to_thread(server.restart, 1.0)
            answered = await asyncio.wait_for(asyncio.gather(*queued), 90)
            await asyncio.to_thread(wait_for_worker, settings, worker, 60)
            after = await layer.images(invocation(picture(scene_png(7_350_100))), explicit=True)
            return answered, after

        answered, after = asyncio.run(main())
    finally:
        server.stop()
    outcomes = [(replies[0].kind, replies[0].code) for replies in answered]
    assert all(len(replies) == 1 for replies in answered)
    assert (ReplyKind.REFUSAL, "lost") in outcomes, outcomes
    assert set(outcomes) <= {(ReplyKind.REFUSAL, "lost"), (ReplyKind.RESULT, "")}, outcomes
    lost = next(replies[0] for replies in answered if replies[0].code == "lost")
    assert "send it again" in lost.text
    assert after[0].kind is ReplyKind.RESULT, (after, worker.output()[-3000:])


@pytest.mark.timeout(60)
def test_a_redis_full_at_its_memory_limit_is_answered_busy(tmp_path, model_env):
    """A broker Redis at ``maxmemory`` with ``noeviction`` (as docker-compose runs it) refuses writes: the bot
    answers "busy" at once instead of an error id, and serves again once memory is freed."""
    import redis

    try:
        server = RedisServer(
            tmp_path / "redis",
            durable=False,
            extra_args=("--maxmemory", "3mb", "--maxmemory-policy", "noeviction"),
        )
    except ServerMissing as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        client = redis.Redis.from_url(server.url())
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(100):
                client.set(f"filler:{i}", b"x" * 100_000)
        from bot.layer import CommandLayer

        layer = CommandLayer.from_settings(layer_settings({**model_env, "ANIBOT_REDIS_URL": server.url()}))
        started = time.monotonic()
        full = asyncio.run(layer.images(invocation(picture(scene_png(7_360_001))), explicit=True))
        assert time.monotonic() - started < 10
        assert [(r.kind, r.code) for r in full] == [(ReplyKind.REFUSAL, "busy")], full
        client.delete(*client.keys("filler:*"))
        # memory back: the picture is taken again (no worker runs here, so it is queued, then "unavailable")
        freed = asyncio.run(layer.images(invocation(picture(scene_png(7_360_001))), explicit=True))
        assert [(r.kind, r.code) for r in freed] == [(ReplyKind.REFUSAL, "unavailable")], freed
    finally:
        server.stop()


# --- PostgreSQL restarted under load ---------------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()


def logged_rows(store: Store) -> dict[str, tuple[int, int]]:
    """Per logged job: (heads the analysis row announces, head rows written)."""
    from sqlalchemy import text

    with store.engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT l.job_id, l.n_heads, (SELECT count(*) FROM anibot_analysis_head h WHERE h.job_id = l.job_id)"
                " FROM anibot_analysis_log l"
            )
        ).all()
    return {job_id: (int(n), int(written)) for job_id, n, written in rows}


@pytest.mark.timeout(240)
def test_postgres_restarted_under_load(own_redis, own_postgres, model_env, start_worker):
    """PostgreSQL crashes (immediate stop) while analyses are running and queued, and comes back a few seconds
    later: every analysis ends done (retried) or failed with a clear message; each done analysis is logged once
    with all its heads, and nothing is logged for a failed one."""
    from workers.client import QueueClient

    database_url = own_postgres.url()
    store = Store(database_url)
    store.create_all()
    env = {
        **model_env,
        "ANIBOT_REDIS_URL": own_redis.url(),
        "ANIBOT_DATABASE_URL": database_url,
        "ANIBOT_TEST_TASK_DELAY_S": "0.5",
        **QUICK_REDELIVERY,
    }
    settings = layer_settings(env)
    worker = start_worker(env, queues="gpu")
    wait_for_worker(settings, worker)
    client = QueueClient(settings)
    from core.storage.jobs import Requester

    warm = client.analyze(scene_png(7_400_000), requester=Requester("test", "pg", "warm"), timeout_s=120)
    assert warm.job.status is JobStatus.DONE, worker.output()[-3000:]

    jobs = [
        client.submit_analysis(scene_png(7_400_001 + i), requester=Requester("test", "pg", f"user-{i}"))
        for i in range(6)
    ]
    assert wait_for(lambda: any(client.jobs.require(j.id).status is JobStatus.RUNNING for j in jobs), 30)
    from bot.layer import CommandLayer

    layer = CommandLayer(settings, client, store)
    time.sleep(0.3)
    own_postgres.crash()
    started = time.monotonic()
    down = asyncio.run(layer.command(invocation(), "stats"))  # /stats reads the database
    assert time.monotonic() - started < 15
    assert [(r.kind, r.code) for r in down] == [(ReplyKind.REFUSAL, "busy")], down
    time.sleep(max(0.0, 4 - (time.monotonic() - started)))
    own_postgres.start()
    finished = [client.wait(job.id, timeout_s=150) for job in jobs]
    log = worker.output()

    rows = logged_rows(store)
    for job in finished:
        assert job.status.finished, (job, log[-3000:])
        if job.status is JobStatus.DONE:
            assert job.id in rows, (job, log[-3000:])
            announced, written = rows[job.id]
            assert written == announced, f"job {job.id}: {written} of {announced} heads logged"
            assert len(client.fetch_analysis(job).result.heads) == announced
        else:  # failed clearly, and nothing of it is in the database
            assert job.error is not None and job.error.code != "internal", (job, log[-3000:])
            assert job.id not in rows
    assert store.analysis_count() == 1 + sum(job.status is JobStatus.DONE for job in finished)
    done = sum(job.status is JobStatus.DONE for job in finished)
    assert done == len(jobs), ([(j.id, j.status, j.error) for j in finished], log[-4000:])


SLOW_HEADS = """
CREATE TABLE anibot_test_slow (on_ boolean);
INSERT INTO anibot_test_slow VALUES (true);
CREATE FUNCTION anibot_test_slow_heads() RETURNS trigger AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM anibot_test_slow) THEN PERFORM pg_sleep(3); END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER anibot_test_slow_heads BEFORE INSERT ON anibot_analysis_head
  FOR EACH ROW EXECUTE FUNCTION anibot_test_slow_heads();
"""


@pytest.mark.timeout(240)
def test_postgres_crash_between_an_analysis_and_its_heads_leaves_nothing_half_written(
    own_redis, own_postgres, model_env, start_worker
):
    """The database is slow to take an analysis' head rows (a trigger sleeps), and crashes right then: the
    analysis and its heads are one write, so after the restart the retried job logs both, once."""
    from sqlalchemy import text

    from core.storage.jobs import Requester
    from workers.client import QueueClient

    database_url = own_postgres.url()
    store = Store(database_url)
    store.create_all()
    with store.engine.begin() as c:
        c.execute(text(SLOW_HEADS))
    env = {**model_env, "ANIBOT_REDIS_URL": own_redis.url(), "ANIBOT_DATABASE_URL": database_url}
    settings = layer_settings(env)
    worker = start_worker({**env, **QUICK_REDELIVERY}, queues="gpu")
    wait_for_worker(settings, worker)
    client = QueueClient(settings)
    job = client.submit_analysis(scene_png(7_450_001), requester=Requester("test", "pg", "slow"))

    def writing_heads() -> bool:
        with store.engine.connect() as c:
            return bool(
                c.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND state = 'active'"
                    )
                ).scalar()
            )

    assert wait_for(writing_heads, 120, interval_s=0.1), worker.output()[-3000:]
    own_postgres.crash()
    store.engine.dispose()
    own_postgres.start()
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM anibot_test_slow"))
    finished = client.wait(job.id, timeout_s=120)
    log = worker.output()
    assert finished.status is JobStatus.DONE, (finished, log[-3000:])
    heads = len(client.fetch_analysis(finished).result.heads)
    assert heads > 0
    assert logged_rows(store) == {job.id: (heads, heads)}, log[-3000:]


# --- a burst of API requests -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_burst_of_api_requests_from_one_and_from_twenty_callers(own_redis, model_env, start_worker):
    """200 analyses from one caller, then 10 from each of 20 callers (own loopback addresses), all at once,
    against the API served on loopback: every request is answered (200 or 429 with Retry-After, never an error
    or a dropped connection), the per-caller and whole-API buckets hold, and a refused request stores nothing
    (Redis holds one job per accepted request, and its memory stays within a few MB)."""
    from aiohttp import web

    from bot.api.app import build_app
    from bot.layer import CommandLayer
    from scripts.bench_faults import burst, limits_hold

    env = {**model_env, "ANIBOT_REDIS_URL": own_redis.url()}
    limits = {
        "rate_user_burst": 3,
        "rate_user_per_min": 6.0,
        "rate_chat_burst": 10,
        "rate_chat_per_min": 20.0,
    }
    settings = layer_settings(env, **limits)
    worker = start_worker(env, queues="gpu")
    wait_for_worker(settings, worker)
    layer = CommandLayer.from_settings(settings)
    pictures = [scene_png(7_500_000 + i) for i in range(4)]

    async def main():  # type: ignore[no-untyped-def]
        runner = web.AppRunner(build_app(settings, layer), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        try:
            one = await burst(url, lambda c, i: pictures[i % 2], callers=1, per_caller=200)
            for key in own_redis_client.scan_iter(
                "anibot:rate:*"
            ):  # the second burst starts with full buckets
                own_redis_client.delete(key)
            many = await burst(url, lambda c, i: pictures[2 + c % 2], callers=20, per_caller=10)
        finally:
            await runner.cleanup()
        return one, many

    import redis

    own_redis_client = redis.Redis.from_url(own_redis.url())
    memory_before = own_redis.info_memory()["used_memory"]
    one, many = asyncio.run(main())
    memory = own_redis.info_memory()

    for outcome, callers in ((one, 1), (many, 20)):
        assert outcome.no_answer == [], outcome.no_answer[:5]
        assert outcome.answered == 200
        totals = outcome.status_totals()
        assert set(totals) <= {200, 429}, (totals, outcome.codes)
        assert outcome.missing_retry_after == 0
        assert limits_hold(outcome, settings) == []
        assert len(outcome.statuses) == callers  # each loopback address counted as its own caller
        assert totals[200] >= 1
    assert one.ok() <= 3 + 1  # the caller's bucket: 3 at once (+ what refills in the burst's seconds)
    assert max(many.ok(c) for c in many.statuses) <= 3 + 1
    # the whole API is one bucket of 10 (+ what refills), and all of it is used: a request refused because its
    # caller's previous one runs spends no token
    assert 10 <= many.ok() <= 10 + 2, many.codes
    assert set(one.codes) | set(many.codes) <= {"ok", "rate_limited", "job_running"}
    jobs = job_records(own_redis.url())
    assert len(jobs) == one.ok() + many.ok()  # a refused request left no job behind
    assert all(job.status is JobStatus.DONE for job in jobs)
    assert memory["used_memory_peak"] - memory_before < 16 * 1024 * 1024, memory
