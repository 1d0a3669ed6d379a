"""Benchmark: in-process analysis vs enqueue-to-result through Redis + Celery, duplicates, throughput.

Prints figures; asserts nothing. Uses the installed models (`anibot models build` first) and the Redis of
ANIBOT_BENCH_REDIS_URL (default redis://127.0.0.1:6379/14, which it empties).

    .venv/bin/python scripts/bench_pipeline.py --images 20
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.analysis.service import AnalysisService  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage.jobs import Requester  # noqa: E402
from core.storage.kv import MemoryKV, RedisKV  # noqa: E402
from core.storage.store import Store  # noqa: E402
from scripts.benchmarking import machine_line, pct, scenes, stage_medians, timed_analyses  # noqa: E402


def line(label: str, values_ms: list[float]) -> str:
    return f"{label:<38} p50 {pct(values_ms, 50):8.1f} ms   p95 {pct(values_ms, 95):8.1f} ms   (n={len(values_ms)})"


def start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    from workers.celery_app import worker_argv, worker_threads

    if concurrency > 1 and "ANIBOT_ONNX_THREADS" not in os.environ:  # as `anibot worker -c N` sets it
        env = {**env, "ANIBOT_ONNX_THREADS": str(worker_threads(concurrency))}
    argv = worker_argv(["gpu"], concurrency=concurrency, name=f"bench-{concurrency}@%h", loglevel="WARNING")
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--throughput-images", type=int, default=24)
    parser.add_argument("--seed", type=int, default=8_000_000)
    args = parser.parse_args()

    redis_url = os.environ.get("ANIBOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    settings = Settings(redis_url=redis_url)
    store = Store.from_settings(settings)
    store.create_all()
    images = scenes(args.images, args.seed)
    print(machine_line(settings.models_dir))

    # --- in process -------------------------------------------------------------------------------
    service = AnalysisService(settings, MemoryKV(), store)
    started = time.perf_counter()
    service.analyze(scenes(1, args.seed - 1)[0], top_n=settings.top_n)
    print(f"model load + first image: {time.perf_counter() - started:.2f} s")
    timed = timed_analyses(service, images, settings.top_n)
    in_process = [t.seconds * 1000 for t in timed]
    print(line("in-process analysis (cache miss)", in_process))
    print("  per stage p50: " + ", ".join(f"{k} {ms:.1f} ms" for k, ms in stage_medians(timed).items()))

    # --- through Redis + one Celery worker ----------------------------------------------------------
    from workers.client import QueueClient

    kv = RedisKV(redis_url)
    kv.client.flushdb()
    env = {
        **os.environ,
        "ANIBOT_REDIS_URL": redis_url,
        "ANIBOT_LOG_LEVEL": "WARNING",
        "ANIBOT_MODELS_DIR": str(settings.models_dir.resolve()),
        "ANIBOT_DATABASE_URL": settings.sqlalchemy_url,
    }
    log = Path("/tmp/anibot-bench-worker.log")
    client = QueueClient(settings)
    worker = start_worker(env, 1, log)
    try:
        client.analyze(scenes(1, args.seed - 2)[0], requester=Requester("bench"), timeout_s=300)  # warm-up
        queued = []
        for data in images:
            t0 = time.perf_counter()
            client.analyze(data, requester=Requester("bench"), timeout_s=300)
            queued.append((time.perf_counter() - t0) * 1000)
        duplicates = []
        for data in images:
            t0 = time.perf_counter()
            done = client.analyze(data, requester=Requester("bench"), timeout_s=300)
            duplicates.append((time.perf_counter() - t0) * 1000)
            assert done.job.cached
        print(line("enqueue-to-result via Redis (1 worker)", queued))
        print(f"{'queue overhead (difference of p50s)':<38} {pct(queued, 50) - pct(in_process, 50):8.1f} ms")
        print(line("duplicate image (answered from cache)", duplicates))
        rates = {1: throughput(client, args, args.seed + 100_000)}
    finally:
        stop(worker)
    worker = start_worker(env, 2, log)
    try:
        # warm both pool processes at once (each loads its models on its first task)
        warm = [client.submit_analysis(d, requester=Requester("bench")) for d in scenes(2, args.seed - 4)]
        for job in warm:
            client.wait(job.id, 300)
        rates[2] = throughput(client, args, args.seed + 200_000)
    finally:
        stop(worker)
    for processes, rate in rates.items():
        print(f"{f'throughput, {processes} worker process(es)':<38} {rate:8.2f} images/s")


def throughput(client, args, seed: int) -> float:  # type: ignore[no-untyped-def]
    batch = scenes(args.throughput_images, seed)
    t0 = time.perf_counter()
    jobs = [client.submit_analysis(data, requester=Requester("bench")) for data in batch]
    for job in jobs:
        client.wait(job.id, 600)
    return len(batch) / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
