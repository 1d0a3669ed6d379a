"""Tasks that outlive a Redis restart: a task whose Redis calls fail for want of a connection waits for Redis and
runs again in the same process, instead of asking Celery for a retry.

A Celery retry is a new message sent to the broker, and the broker is that very Redis: while it is down, the
retry cannot be sent and Celery rejects the message without requeueing it, so the job was lost (seen in
tests/test_faults.py). Running the task again in process is safe because every task here is idempotent (a
finished job is left alone); the wait is bounded by the task's time limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis.exceptions
from celery import Task

log = logging.getLogger(__name__)
T = TypeVar("T")

REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def through_outages(call: Callable[[], T], *, what: str, max_wait_s: float, max_pause_s: float = 5.0) -> T:
    """``call()``, called again (after a pause growing from 0.5 s to ``max_pause_s``) while Redis is unreachable,
    for at most ``max_wait_s``; then the last error is raised."""
    deadline = time.monotonic() + max_wait_s
    pause = 0.5
    while True:
        try:
            return call()
        except REDIS_DOWN as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("%s: Redis still unreachable after %.0f s: %s", what, max_wait_s, exc)
                raise
            log.warning("%s: Redis unreachable (%s); running again in %.1f s", what, exc, min(pause, left))
            time.sleep(min(pause, left))
            pause = min(pause * 2, max_pause_s)


class OutageTolerantTask(Task):
    """A task that waits out a Redis outage (see :func:`through_outages`), up to its hard time limit."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # the worker's tracer has pushed this delivery's request already: run the body (Task.__call__ would push
        # a bare request and lose the retry count)
        limit = self.time_limit or self.app.conf.task_time_limit or 300
        job = args[0] if args else kwargs.get("job_id", "")
        return through_outages(
            lambda: self.run(*args, **kwargs),
            what=f"task {self.name} for job {job}",
            max_wait_s=float(limit),
        )
