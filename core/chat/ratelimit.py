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

# KEYS: the buckets; ARGV[1] how many are wanted, then a refill rate (tokens/s) and a capacity per bucket. Grants
# as many as every bucket holds (0 to wanted) and takes them from each, all at once; returns the grant, the wait
# until one more could be granted, and the (1-based) bucket that limited the grant (0 when none did).
_TOKEN_BUCKETS_UP_TO = """
local want = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens, grant, limiting = {}, want, 0
for i = 1, #KEYS do
  local rate, capacity = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local have = tonumber(state[1]) or capacity
  local ts = tonumber(state[2]) or now
  have = math.min(capacity, have + math.max(0, now - ts) * rate)
  tokens[i] = have
  if math.floor(have) < grant then
    grant = math.floor(have)
    limiting = i
  end
end
local wait = 0
for i = 1, #KEYS do
  local rate, capacity = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if grant < want then
    wait = math.max(wait, (grant + 1 - tokens[i]) / rate)
  end
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i] - grant), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(capacity / rate) + 1)
end
return {grant, tostring(wait), limiting}
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


@dataclass(frozen=True)
class Grant:
    """What :meth:`TokenBuckets.take_up_to` granted: ``granted`` items, and when fewer than wanted, the wait until
    one more could be granted and the index of the bucket that limited the grant (-1 when none did)."""

    granted: int
    retry_after_s: float = 0.0
    limiting: int = -1

    @property
    def retry_after_text(self) -> str:
        return Decision(False, self.retry_after_s).retry_after_text


class TokenBuckets:
    """Named token buckets in Redis (``client`` is a redis-py client)."""

    PREFIX = "anibot:rate:"

    def __init__(self, client: Any) -> None:
        self.client = client
        self._script = client.register_script(_TOKEN_BUCKET)
        self._up_to = client.register_script(_TOKEN_BUCKETS_UP_TO)

    def take(self, key: str, rule: BucketRule, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from bucket ``key`` if it holds that many; a refused take costs nothing.

        A cost above the bucket's size could never be paid: it is refused (never charged at the burst size)."""
        if cost > rule.burst:
            return Decision(False, float("inf"))
        allowed, wait = self._script(keys=[self.PREFIX + key], args=[rule.rate_per_s, rule.burst, cost])
        return Decision(bool(int(allowed)), float(wait))

    def take_up_to(self, buckets: list[tuple[str, BucketRule]], wanted: int) -> Grant:
        """As many of ``wanted`` as every bucket holds (each item costs one token in each bucket), taken from
        all of them at once: ten pictures cost ten tokens, and a bucket with three answers three."""
        args: list[float] = [wanted]
        for _, rule in buckets:
            args.extend((rule.rate_per_s, rule.burst))
        granted, wait, limiting = self._up_to(keys=[self.PREFIX + key for key, _ in buckets], args=args)
        return Grant(int(granted), float(wait), int(limiting) - 1)


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
