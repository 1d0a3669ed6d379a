"""Waiting for queued jobs from async code, without blocking the event loop and without hanging forever.

Redis calls run in threads; a waiting job blocks a thread on its done signal (Redis BLMOVE) for at most a
second at a time, so an answer arrives as soon as the worker finishes and the event loop is never blocked. A job
that stays queued while no worker consumes its queue is given up ("unavailable") and marked failed, so that a
worker started later does not answer a question nobody waits for any more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum

from bot.outage import UNREACHABLE_ERRORS
from core.storage.jobs import DONE_PREFIX, Job, JobError, JobStatus
from workers.client import QueueClient

log = logging.getLogger(__name__)


LOST = "I lost track of your request (the service restarted). Please send it again."


class WaitOutcome(StrEnum):
    FINISHED = "finished"  # done or failed: see job.status
    UNAVAILABLE = "unavailable"  # no worker consumes the queue
    BUSY = "busy"  # workers exist but the job did not finish in time


@dataclass(frozen=True)
class Waited:
    outcome: WaitOutcome
    job: Job


class JobWaiter:
    def __init__(
        self,
        client: QueueClient,
        *,
        unavailable_after_s: float,
        timeout_s: float,
        poll_s: float = 0.25,
        max_poll_s: float = 1.0,
    ) -> None:
        self.client = client
        self.unavailable_after_s = unavailable_after_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.max_poll_s = max_poll_s
        self._alive_cache: dict[str, tuple[float, int]] = {}
        # waits get threads of their own, so many waiting users never starve asyncio.to_thread's small pool
        self._threads = ThreadPoolExecutor(max_workers=64, thread_name_prefix="anibot-wait")

    async def workers_for(self, queue: str) -> int:
        """Live workers on ``queue``, remembered for a few seconds (asking takes up to a second)."""
        cached = self._alive_cache.get(queue)
        if cached and time.monotonic() - cached[0] < 10.0:
            return cached[1]
        count = await asyncio.to_thread(self.client.workers_for, queue)
        self._alive_cache[queue] = (time.monotonic(), count)
        return count

    async def backlog(self, queue: str) -> int:
        return await asyncio.to_thread(self.client.backlog, queue)

    async def wait(self, job: Job, queue: str, *, timeout_s: float | None = None) -> Waited:
        """Wait for ``job``: finished, unavailable (no worker consumes ``queue``) or busy (not done in time).

        A Redis restart meanwhile is waited out until the deadline (the job and its queue come back with a
        durable Redis), and workers reconnecting after it get ``unavailable_after_s`` before the job is given up."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        check_workers_at = started + self.unavailable_after_s
        checked_workers = False
        delay = self.poll_s
        outage = False
        while True:
            try:
                current = await asyncio.to_thread(self.client.jobs.get, job.id)
                if current is None:  # expired, or lost with a Redis that restarted without persistence
                    log.warning("job %s: its record is gone; answered lost", job.id)
                    failed = replace(job, status=JobStatus.FAILED, error=JobError("lost", LOST))
                    return Waited(WaitOutcome.FINISHED, failed)
                job = current
                if outage:
                    log.info("job %s: Redis reachable again after %.1f s", job.id, time.monotonic() - started)
                    outage = False
                if job.status.finished:
                    return Waited(WaitOutcome.FINISHED, job)
                now = time.monotonic()
                if job.status is JobStatus.QUEUED and now >= check_workers_at and not checked_workers:
                    checked_workers = True
                    if await self.workers_for(queue) == 0:
                        log.warning(
                            "job %s: no worker consumes queue %s; answered unavailable", job.id, queue
                        )
                        job = await asyncio.to_thread(
                            self.client.jobs.update,
                            job,
                            status=JobStatus.FAILED,
                            error=JobError("unavailable", "No worker is running."),
                        )
                        return Waited(WaitOutcome.UNAVAILABLE, job)
                elapsed = now - started
                if elapsed >= timeout:
                    return Waited(WaitOutcome.BUSY, job)
                # block a thread (not the loop) on the job's done signal: a finished job wakes us at once
                pause = min(delay, max(0.0, timeout - elapsed))
                await asyncio.get_running_loop().run_in_executor(
                    self._threads, self.client.kv.wait, DONE_PREFIX + job.id, pause
                )
                delay = min(delay * 1.5, self.max_poll_s)
            except UNREACHABLE_ERRORS as exc:
                if not outage:
                    log.warning("job %s: Redis unreachable while waiting (%s); waiting on", job.id, exc)
                outage = True
                # workers reconnect after an outage: give them the grace period again, and forget who was alive
                checked_workers = False
                check_workers_at = time.monotonic() + self.unavailable_after_s
                self._alive_cache.pop(queue, None)
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    return Waited(WaitOutcome.BUSY, job)
                await asyncio.sleep(min(self.max_poll_s, left))
