"""The shared stores out of reach for a while (Redis or the database restarting, a Redis full at its memory
limit): which errors say so, and the clear "busy, try again" the user gets instead of an error id."""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

from bot.replies import Reply, refusal

UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # a Redis at maxmemory with noeviction refuses writes (docker-compose)
    kombu.exceptions.OperationalError,  # Celery could not reach the broker to send a task
    sqlalchemy.exc.OperationalError,
)
UNREACHABLE = (
    "I'm very busy right now: I can't reach my job queue or my database. Please try again in a minute."
)


def unreachable_reply() -> Reply:
    return refusal(UNREACHABLE, "busy")
