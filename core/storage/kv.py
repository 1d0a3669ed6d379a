"""The key-value operations blobs, jobs and the result cache need, over Redis or in process memory.

``RedisKV`` is what services share across machines; ``MemoryKV`` backs the embedded (no-Redis) mode of the CLI.
Both implement the same small protocol, so everything above them is written once.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class KeyValue(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    def set_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def expire_within(self, key: str, ttl_s: int) -> None:
        """Let ``key`` live at most ``ttl_s`` more seconds (a longer time to live is shortened, never lengthened)."""
        ...

    def incr(self, key: str) -> int: ...

    def push_recent(self, key: str, value: bytes, keep: int, ttl_s: int) -> None: ...

    def recent(self, key: str, limit: int) -> list[bytes]: ...

    def notify(self, channel: str, ttl_s: int) -> None:
        """Wake the waiters of ``channel`` (a done-signal that outlives a waiter arriving late)."""
        ...

    def wait(self, channel: str, timeout_s: float) -> bool:
        """Block until ``channel`` is notified or the timeout passes; True when notified."""
        ...


class RedisKV:
    """Redis-backed key-value store; ``url`` like ``redis://127.0.0.1:6379/0``."""

    def __init__(self, url: str) -> None:
        import redis  # the embedded mode never needs the client library loaded
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.url = url
        # a pooled connection that a Redis restart closed is replaced and the command sent again; a server that
        # stays down fails the call within a fraction of a second (callers answer "busy", they never hang)
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=30,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2, supported_errors=(redis.ConnectionError,)),
        )

    def ping(self) -> bool:
        return bool(self.client.ping())

    def get(self, key: str) -> bytes | None:
        return self.client.get(key)

    def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self.client.set(key, value, ex=ttl_s)

    def set_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool:
        return bool(self.client.set(key, value, ex=ttl_s, nx=True))

    def exists(self, key: str) -> bool:
        return bool(self.client.exists(key))

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def expire_within(self, key: str, ttl_s: int) -> None:
        self.client.expire(key, ttl_s, lt=True)  # LT: only ever shortens (Redis >= 7)

    def incr(self, key: str) -> int:
        return int(self.client.incr(key))

    def push_recent(self, key: str, value: bytes, keep: int, ttl_s: int) -> None:
        """Prepend ``value`` to the list ``key`` and keep its ``keep`` newest entries."""
        with self.client.pipeline() as pipe:
            pipe.lpush(key, value)
            pipe.ltrim(key, 0, keep - 1)
            pipe.expire(key, ttl_s)
            pipe.execute()

    def recent(self, key: str, limit: int) -> list[bytes]:
        return list(self.client.lrange(key, 0, limit - 1))

    def notify(self, channel: str, ttl_s: int) -> None:
        # A list holding one token: BLPOP wakes a waiter at once; a late waiter still finds the token.
        with self.client.pipeline() as pipe:
            pipe.delete(channel)
            pipe.rpush(channel, b"1")
            pipe.expire(channel, ttl_s)
            pipe.execute()

    def wait(self, channel: str, timeout_s: float) -> bool:
        popped = self.client.blmove(channel, channel, timeout=max(timeout_s, 0.01), src="LEFT", dest="RIGHT")
        return popped is not None


class MemoryKV:
    """Thread-safe in-process store with expiry; for one process only (the embedded mode, tests)."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}
        self._lists: dict[str, list[bytes]] = {}
        self._cond = threading.Condition()

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] < time.monotonic():
            del self._data[key]
            return None
        return item[0]

    def get(self, key: str) -> bytes | None:
        with self._cond:
            return self._live(key)

    def set(self, key: str, value: bytes, ttl_s: int) -> None:
        with self._cond:
            self._data[key] = (bytes(value), time.monotonic() + ttl_s)

    def set_if_absent(self, key: str, value: bytes, ttl_s: int) -> bool:
        with self._cond:
            if self._live(key) is not None:
                return False
            self._data[key] = (bytes(value), time.monotonic() + ttl_s)
            return True

    def exists(self, key: str) -> bool:
        return self.get(key) is not None

    def delete(self, key: str) -> None:
        with self._cond:
            self._data.pop(key, None)

    def expire_within(self, key: str, ttl_s: int) -> None:
        with self._cond:
            item = self._data.get(key)
            if item is not None:
                self._data[key] = (item[0], min(item[1], time.monotonic() + ttl_s))

    def incr(self, key: str) -> int:
        with self._cond:
            value = int(self._live(key) or b"0") + 1
            self._data[key] = (str(value).encode(), float("inf"))
            return value

    def push_recent(self, key: str, value: bytes, keep: int, ttl_s: int) -> None:
        with self._cond:
            self._lists[key] = [value, *self._lists.get(key, [])][:keep]

    def recent(self, key: str, limit: int) -> list[bytes]:
        with self._cond:
            return self._lists.get(key, [])[:limit]

    def notify(self, channel: str, ttl_s: int) -> None:
        with self._cond:
            self._data[channel] = (b"1", time.monotonic() + ttl_s)
            self._cond.notify_all()

    def wait(self, channel: str, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._live(channel) is not None, timeout=timeout_s)
