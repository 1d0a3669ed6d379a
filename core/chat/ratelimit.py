"""Rate limits shared by every bot and API process: token buckets and one-running-job locks in Redis.

Both live in Redis so that several bot processes (or machines) enforce one limit together.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# KEYS[1] the bucket; ARGV: refill rate (tokens/s), capacity, cost. Redis' own clock, so every process agrees.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {allowed, tostring(wait)}
"""

# KEYS[1] the lock; ARGV[1] the owner token: delete only what we hold.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class BucketRule:
    """``per_minute`` tokens flow in; at most ``burst`` wait in the bucket."""

    per_minute: float
    burst: int

    @property
    def rate_per_s(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0  # when not allowed: how long until enough tokens flow back

    @property
    def retry_after_text(self) -> str:
        seconds = max(1, math.ceil(self.retry_after_s))
        return f"{seconds} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"


class TokenBuckets:
    """Named token buckets in Redis (``client`` is a redis-py client)."""

    PREFIX = "anibot:rate:"

    def __init__(self, client: Any) -> None:
        self.client = client
        self._script = client.register_script(_TOKEN_BUCKET)

    def take(self, key: str, rule: BucketRule, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from bucket ``key`` if it holds that many; a refused take costs nothing."""
        if cost > rule.burst:  # could never be satisfied: ask for the bucket's worth instead
            cost = rule.burst
        allowed, wait = self._script(keys=[self.PREFIX + key], args=[rule.rate_per_s, rule.burst, cost])
        return Decision(bool(int(allowed)), float(wait))


class ActiveJobs:
    """At most one running job per key (a user in a chat): a lock with a TTL, released by its owner only."""

    PREFIX = "anibot:active:"

    def __init__(self, client: Any, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._release = client.register_script(_RELEASE)

    def acquire(self, key: str, owner: str) -> bool:
        return bool(self.client.set(self.PREFIX + key, owner, nx=True, ex=self.ttl_s))

    def release(self, key: str, owner: str) -> None:
        """Give the lock back; when Redis is unreachable it is left to expire (after ``ttl_s``)."""
        import redis.exceptions

        try:
            self._release(keys=[self.PREFIX + key], args=[owner])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning(
                "could not release %s (Redis unreachable: %s); it expires in %d s", key, exc, self.ttl_s
            )

    def holder(self, key: str) -> str | None:
        value = self.client.get(self.PREFIX + key)
        return value.decode() if value is not None else None
