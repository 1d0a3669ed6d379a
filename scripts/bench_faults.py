"""Bursts against the REST API and the peak memory they cost: 200 analyses from one caller, then 10 each from 20
callers (each from its own loopback address, 127.0.0.2 ...), all at once, over a Redis of its own, a real
worker and a real ``anibot api`` process. Prints what every request got, whether the limits held, and the peak
resident memory of the API process and the peak memory of Redis.

    .venv/bin/python scripts/bench_faults.py [--built .cache/test-models/<digest>]

``--built`` is a folder of built models (``models/``, ``anibot.db``, ``shared/``, as tests/models_cache.py makes);
without it the models and database of the current settings are used. ``tests/test_faults.py`` runs the same
bursts (``burst``) and checks the same limits (``limits_hold``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.fault_servers import RedisServer, free_port, peak_rss_bytes  # noqa: E402

MB = 1024 * 1024


@dataclass
class Burst:
    """What each request of a burst got: status by caller, the slowest answer, requests that got none."""

    statuses: dict[int, Counter[int]] = field(default_factory=dict)  # caller -> status -> count
    codes: Counter[str] = field(default_factory=Counter)
    no_answer: list[str] = field(default_factory=list)  # exceptions and timeouts
    missing_retry_after: int = 0  # 429s without a Retry-After header
    slowest_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def answered(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def ok(self, caller: int | None = None) -> int:
        callers = self.statuses.values() if caller is None else [self.statuses.get(caller, Counter())]
        return sum(c[200] for c in callers)

    def status_totals(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for c in self.statuses.values():
            total.update(c)
        return total


def caller_address(caller: int) -> str:
    return f"127.0.0.{caller + 2}"


async def burst(
    url: str,
    picture_of: Callable[[int, int], bytes],
    *,
    callers: int,
    per_caller: int,
    timeout_s: float = 120.0,
) -> Burst:
    """``per_caller`` analyses from each of ``callers`` callers, all sent at once; ``picture_of(caller, i)``."""
    import aiohttp

    outcome = Burst()
    started = time.monotonic()

    async def one(session: aiohttp.ClientSession, caller: int, i: int) -> None:
        form = aiohttp.FormData()
        form.add_field("image", picture_of(caller, i), filename="scene.png", content_type="image/png")
        sent = time.monotonic()
        try:
            async with session.post(f"{url}/v1/analyze", data=form) as response:
                body = await response.json(content_type=None)
                status = response.status
                if status == 429 and "Retry-After" not in response.headers:
                    outcome.missing_retry_after += 1
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            outcome.no_answer.append(f"caller {caller} request {i}: {type(exc).__name__}: {exc}")
            return
        outcome.slowest_s = max(outcome.slowest_s, time.monotonic() - sent)
        outcome.statuses.setdefault(caller, Counter())[status] += 1
        outcome.codes["ok" if status == 200 else (body.get("error") or {}).get("code", "?")] += 1

    async def caller_burst(caller: int) -> None:
        connector = aiohttp.TCPConnector(limit=0, local_addr=(caller_address(caller), 0))
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(one(session, caller, i) for i in range(per_caller)))

    await asyncio.gather(*(caller_burst(c) for c in range(callers)))
    outcome.elapsed_s = time.monotonic() - started
    return outcome


def allowance(burst_size: int, per_min: float, elapsed_s: float) -> int:
    """The most a token bucket of ``burst_size`` refilled at ``per_min`` lets through in ``elapsed_s``."""
    return burst_size + int(per_min / 60.0 * elapsed_s) + 1


def limits_hold(outcome: Burst, settings) -> list[str]:  # type: ignore[no-untyped-def]
    """What broke the per-caller and per-chat (the whole API is one chat) buckets, if anything."""
    problems = []
    user = allowance(settings.rate_user_burst, settings.rate_user_per_min, outcome.elapsed_s)
    chat = allowance(settings.rate_chat_burst, settings.rate_chat_per_min, outcome.elapsed_s)
    for caller in outcome.statuses:
        if outcome.ok(caller) > user:
            problems.append(f"caller {caller}: {outcome.ok(caller)} analyses, the bucket allows {user}")
    if outcome.ok() > chat:
        problems.append(f"{outcome.ok()} analyses in all, the API's bucket allows {chat}")
    return problems


# --- the benchmark: its own Redis, a worker and an `anibot api` process --------------------------------------


def _wait_http(url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # 503: up, the worker not yet seen
                raise
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the API at {url} did not become healthy")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _jobs_and_rows(redis_url: str, database_url: str) -> tuple[int, int, int]:
    """Analysis jobs in Redis, those not finished, and analysis log rows beyond one per job (duplicates)."""
    import redis

    from core.storage.jobs import JOB_PREFIX, Job
    from core.storage.store import Store

    client = redis.Redis.from_url(redis_url)
    jobs = [Job.from_json(client.get(key)) for key in client.scan_iter(JOB_PREFIX + "*")]
    store = Store(database_url)
    duplicates = sum(max(0, store.analysis_count(job_id=job.id) - 1) for job in jobs)
    return len(jobs), sum(not job.status.finished for job in jobs), duplicates


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--built", type=Path, default=os.environ.get("ANIBOT_TEST_MODELS_DIR") or None)
    parser.add_argument("--requests", type=int, default=200, help="requests from the one caller")
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--per-caller", type=int, default=10)
    parser.add_argument(
        "--pictures", type=int, default=20, help="distinct pictures the requests cycle through"
    )
    args = parser.parse_args(argv)

    from core.datasets.synth import render_scene
    from core.settings import Settings
    from scripts.benchmarking import machine_line, png_bytes
    from workers.celery_app import worker_argv

    root = Path(tempfile.mkdtemp(prefix="anibot-bench-faults-"))
    redis_server = RedisServer(root / "redis")
    redis_server.start()
    env = {**os.environ, "ANIBOT_REDIS_URL": redis_server.url(), "ANIBOT_DATA_DIR": str(root)}
    env["ANIBOT_LOG_LEVEL"] = "WARNING"
    if args.built is not None:
        shutil.copy(args.built / "anibot.db", root / "anibot.db")
        if (args.built / "shared").is_dir():
            shutil.copytree(args.built / "shared", root / "shared")
        env["ANIBOT_MODELS_DIR"] = str(args.built / "models")
        env["ANIBOT_DATABASE_URL"] = f"sqlite:///{root / 'anibot.db'}"
    port = free_port()
    env["ANIBOT_API_PORT"] = str(port)
    env["ANIBOT_API_HOST"] = "127.0.0.1"
    os.environ.update({k: v for k, v in env.items() if k.startswith("ANIBOT_")})
    settings = Settings()
    print(machine_line(settings.models_dir))
    log = (root / "processes.log").open("ab")
    worker = subprocess.Popen(
        worker_argv(["gpu"], concurrency=1, name="bench-faults@%h", loglevel="WARNING"),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "api"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    pictures = [png_bytes(render_scene(9_500_000 + i).image) for i in range(args.pictures)]
    try:
        _wait_http(url, 180)
        warm = asyncio.run(burst(url, lambda c, i: pictures[0], callers=1, per_caller=1))
        assert warm.ok() == 1, f"the warm-up analysis failed: {warm.codes}"
        rss_idle = peak_rss_bytes(api.pid)
        redis_idle = redis_server.info_memory()["used_memory"]
        print(
            f"API process peak RSS after start and one analysis: {rss_idle / MB:.1f} MB; Redis {redis_idle / MB:.1f} MB"
        )
        print(
            f"limits: per caller {settings.rate_user_burst} at once + {settings.rate_user_per_min:g}/min, "
            f"the whole API {settings.rate_chat_burst} + {settings.rate_chat_per_min:g}/min, one analysis at a time"
        )
        print()
        print(
            "| burst | requests | answered | 200 | 429 | other | no answer | limits | slowest "
            "| API peak RSS | Redis peak |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, callers, per_caller in (
            ("1 caller", 1, args.requests),
            (f"{args.callers} callers", args.callers, args.per_caller),
        ):
            time.sleep(max(settings.rate_chat_burst / settings.rate_chat_per_min * 60, 1))  # buckets refill
            outcome = asyncio.run(
                burst(
                    url,
                    lambda c, i, n=per_caller: pictures[(c * n + i) % len(pictures)],
                    callers=callers,
                    per_caller=per_caller,
                )
            )
            totals = outcome.status_totals()
            problems = limits_hold(outcome, settings)
            other = outcome.answered - totals[200] - totals[429]
            print(
                f"| {name} | {callers * per_caller} | {outcome.answered} | {totals[200]} | {totals[429]} | {other} "
                f"| {len(outcome.no_answer)} | {'held' if not problems else '; '.join(problems)} "
                f"| {outcome.slowest_s:.1f} s | {peak_rss_bytes(api.pid) / MB:.1f} MB "
                f"| {redis_server.info_memory()['used_memory_peak'] / MB:.1f} MB |"
            )
            for line in outcome.no_answer[:5]:
                print("   no answer:", line)
        jobs, unfinished, duplicates = _jobs_and_rows(redis_server.url(), settings.sqlalchemy_url)
        print()
        print(f"analysis jobs created: {jobs}; not finished: {unfinished}; logged twice: {duplicates}")
        print(f"Redis process peak RSS: {redis_server.peak_rss_bytes() / MB:.1f} MB")
    finally:
        _stop(api)
        _stop(worker)
        redis_server.stop()
        log.close()
        print(f"(logs in {root / 'processes.log'})")


if __name__ == "__main__":
    main()
