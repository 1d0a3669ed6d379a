"""Shared fixtures: starter models built once per session, a real Redis, real Celery worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("ANIBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("ANIBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def shared_data_dir() -> Path:
    return Path(os.environ.get("ANIBOT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def built_models() -> Path:
    """Starter models trained by `anibot models build` (same code path), plus a SQLite store with the enrolled
    gallery. Cached under .cache/ by a digest of the training code, so a local re-run reuses them;
    ANIBOT_TEST_MODELS_DIR points at a ready folder instead."""
    from tests.models_cache import ensure_test_models

    return ensure_test_models()


def copy_built_state(built_models: Path, data_dir: Path) -> None:
    """The enrolled gallery of the built models (store, published gallery, reference crops) into a data dir."""
    shutil.copy(built_models / "anibot.db", data_dir / "anibot.db")
    if (built_models / "shared").is_dir():
        shutil.copytree(built_models / "shared", data_dir / "shared", dirs_exist_ok=True)


def stack_env(built_models: Path, root: Path, redis_url: str) -> dict[str, str]:
    """The environment of a stack of processes over the built models: its own copy of their state (database,
    shared folder) under ``root``, and ``redis_url``."""
    copy_built_state(built_models, root)
    return {
        "ANIBOT_MODELS_DIR": str(built_models / "models"),
        "ANIBOT_DATA_DIR": str(root),
        "ANIBOT_DATABASE_URL": f"sqlite:///{root / 'anibot.db'}",
        "ANIBOT_REDIS_URL": redis_url,
        "ANIBOT_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def model_env(built_models: Path, tmp_path: Path) -> dict[str, str]:
    """Environment of a process using the built models with its own copy of the gallery store."""
    return stack_env(built_models, tmp_path, TEST_REDIS_URL)


@pytest.fixture
def model_settings(model_env: dict[str, str]):  # type: ignore[no-untyped-def]
    from core.settings import Settings

    return Settings(
        models_dir=Path(model_env["ANIBOT_MODELS_DIR"]),
        data_dir=Path(model_env["ANIBOT_DATA_DIR"]),
        database_url=model_env["ANIBOT_DATABASE_URL"],
        redis_url=model_env["ANIBOT_REDIS_URL"],
    )


def empty_redis(url: str):  # type: ignore[no-untyped-def]
    """A Redis database, emptied. Fails in CI when Redis is down, skips the test elsewhere."""
    from core.storage.kv import RedisKV

    kv = RedisKV(url)
    try:
        kv.ping()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    kv.client.flushdb()
    return kv


@pytest.fixture
def redis_kv():  # type: ignore[no-untyped-def]
    """The test Redis database, emptied before each test. Fails in CI when Redis is down, skips elsewhere."""
    kv = empty_redis(TEST_REDIS_URL)
    yield kv
    kv.client.flushdb()


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, queues: str = "gpu") -> None:
        self.name = f"test-{uuid.uuid4().hex[:6]}@%h"
        self.log_path = log_path
        self.log = log_path.open("ab")
        from workers.celery_app import worker_argv

        argv = [*worker_argv(queues.split(","), concurrency=1, name=self.name), "--without-heartbeat"]
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole worker: the Celery parent and its pool children."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(env: dict[str, str], queues: str = "gpu") -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(workers)}.log", queues)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


# how long a test waits for a training job: an upper bound, never a speed target. A retrain takes about 3 minutes
# alone on 2 cores and outran a 300 s wait with two busy loops beside it (seen), so this leaves room for a busy machine.
TRAIN_JOB_WAIT_S = 900


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


# stand-in real face set: synthetic portraits filed under real characters whose canonical look they share
STAND_IN_FACES = {
    "fate_testarossa": "hikari",  # blonde, red eyes, twintails
    "kinomoto_sakura": "chiyo",  # brown, green eyes, short
    "lelouch_lamperouge": "rin",  # black hair, purple eyes
    "hatsune_miku": "mizu",  # aqua hair
}


@pytest.fixture(scope="session")
def face_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder-per-character set in the moeimouto layout: train/NNN_name/*.png and test/NNN_name/*.png."""
    from core.datasets.synth import render_portrait

    root = tmp_path_factory.mktemp("faces")
    for split, seeds in (("train", range(0, 8)), ("test", range(100, 104))):
        for index, (label, key) in enumerate(STAND_IN_FACES.items()):
            folder = root / split / f"{index:03d}_{label}"
            folder.mkdir(parents=True)
            for seed in seeds:
                render_portrait(key, seed * 37 + index).save(folder / f"face_{seed}.png")
    return root


# --- the front-ends' stack: one worker on every queue, shared by the bot and API tests ----------------------

BOT_REDIS_URL = os.environ.get("ANIBOT_TEST_BOT_REDIS_URL", "redis://127.0.0.1:6379/14")
IDLE_REDIS_URL = os.environ.get("ANIBOT_TEST_IDLE_REDIS_URL", "redis://127.0.0.1:6379/13")  # no worker here
BOT_ADMINS = "telegram:1001,discord:1001,test:admin,api:admin"


class BotStack:
    """A real Redis database and a real Celery worker (gpu, cpu and train queues) with the built models.

    Session-wide: tests keep apart by using their own chat and user ids (see ``fresh_id``)."""

    def __init__(self, env: dict[str, str], worker: WorkerProcess) -> None:
        self.env = env
        self.worker = worker

    def settings(self, **overrides: object):  # type: ignore[no-untyped-def]
        from core.settings import Settings

        values = {
            "models_dir": Path(self.env["ANIBOT_MODELS_DIR"]),
            "data_dir": Path(self.env["ANIBOT_DATA_DIR"]),
            "database_url": self.env["ANIBOT_DATABASE_URL"],
            "redis_url": self.env["ANIBOT_REDIS_URL"],
            "admin_ids": BOT_ADMINS,
            "unavailable_after_s": 2.0,
            "job_wait_timeout_s": 90.0,
        }
        return Settings(**{**values, **overrides})

    def layer(self, **overrides: object):  # type: ignore[no-untyped-def]
        from bot.layer import CommandLayer

        return CommandLayer.from_settings(self.settings(**overrides))


def fresh_id() -> str:
    """A chat or user id no other test uses (rate limits and locks are per chat and user)."""
    return str(uuid.uuid4().int % 10**12)


@pytest.fixture(scope="session")
def bot_stack(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BotStack]:
    kv = empty_redis(BOT_REDIS_URL)
    root = tmp_path_factory.mktemp("bot-stack")
    env = stack_env(built_models, root, BOT_REDIS_URL)
    worker = WorkerProcess(env, root / "worker.log", "gpu,cpu,train")
    stack = BotStack(env, worker)
    from workers.client import QueueClient

    client = QueueClient(stack.settings())
    if not wait_for(lambda: client.workers_for("gpu", timeout_s=0.5) > 0, 120, interval_s=0.5):
        worker.stop()
        raise RuntimeError("the bot-stack worker did not come up:\n" + worker.output()[-3000:])
    yield stack
    worker.stop()
    kv.client.flushdb()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end. Fails in CI when PostgreSQL is
    down, skips elsewhere."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"anibot_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {exc.orig}")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
