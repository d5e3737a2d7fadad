"""Rate-limit state in Redis, shared by every turnout replica behind a load balancer.

The rules are those of ``gateway.ratelimit.policy`` (token buckets refilled per minute,
all-or-nothing across scopes, estimates settled afterwards), run as Lua scripts so that each
admission and each release is one atomic round trip: two replicas can never both take the last
request of a minute. Time comes from the Redis server (``TIME``), so replicas with skewed clocks
still agree.

Keys, under a prefix (``?prefix=`` on the URL, default ``turnout:rl:``):
  ``<prefix>b:<kind>:<name>``  hash {r, t, ts}: request and token buckets, last update in ms;
                               expires once it would have refilled anyway.
  ``<prefix>c:<kind>:<name>``  sorted set of concurrency leases scored by their expiry in ms.
Concurrency slots are leases, not counters, because a replica that dies mid-request never
releases: its leases expire ``lease_seconds`` after the last renewal, and live replicas renew
theirs in the background. For Redis Cluster, put a hash tag in the prefix (``{turnout}:rl:``)
so that one request's keys share a slot.

If Redis cannot be reached, admissions fall back to this process's own ``MemoryBackend``:
limits hold per replica instead of across them (with one replica, exactly), rather than
refusing every request (fail closed) or admitting everything (fail open). A rate limiter
guards budgets and engines; it must not turn a Redis outage into a gateway outage. Each failure
is counted, the outage and the recovery are logged once each, and Redis is tried again after
``retry_seconds``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.metrics import Metrics
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.policy import Clock, LimitName, Scope

log = logging.getLogger("turnout.ratelimit")

DEFAULT_PREFIX = "turnout:rl:"

# Shared preamble: the server's clock in ms, and a bucket refill that mirrors policy.refill.
_PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function refill(level, ts, per_minute)
  if level == nil then return per_minute end
  local elapsed = math.max(now - (ts or now), 0)
  return math.min(per_minute, level + elapsed * per_minute / 60000)
end
"""

# KEYS: per scope i, KEYS[2i-1] its bucket hash and KEYS[2i] its lease set.
# ARGV: estimated tokens, lease id, lease ms, then per scope rpm, tpm, concurrent.
# Returns {denied scope (1-based, 0: admitted), limit, wait ms, then per scope r, t levels}.
_ADMIT = (
    _PRELUDE
    + """
local est, lease, lease_ms = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local n = #KEYS / 2
local r, t, reply = {}, {}, {}
local denied, limit, wait = 0, '', 0
local function deny(i, what, ms)
  if denied == 0 or ms > wait then denied, limit, wait = i, what, ms end
end
for i = 1, n do
  local rpm, tpm, conc = tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2]), tonumber(ARGV[3*i+3])
  local state = redis.call('HMGET', KEYS[2*i-1], 'r', 't', 'ts')
  local ts = tonumber(state[3])
  r[i] = refill(tonumber(state[1]), ts, rpm)
  t[i] = refill(tonumber(state[2]), ts, tpm)
  if rpm > 0 and r[i] < 1 then deny(i, 'requests', (1 - r[i]) * 60000 / rpm) end
  if tpm > 0 then
    local need = math.min(est, tpm)
    if t[i] < need then deny(i, 'tokens', (need - t[i]) * 60000 / tpm) end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2*i], '-inf', now)
    if redis.call('ZCARD', KEYS[2*i]) >= conc then deny(i, 'concurrent', 1000) end
  end
end
if denied == 0 then
  for i = 1, n do
    local rpm, tpm, conc = tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2]), tonumber(ARGV[3*i+3])
    if rpm > 0 then r[i] = r[i] - 1 end
    if tpm > 0 then t[i] = math.max(t[i] - est, -tpm) end
    if rpm > 0 or tpm > 0 then
      redis.call('HSET', KEYS[2*i-1], 'r', tostring(r[i]), 't', tostring(t[i]), 'ts', now)
      -- From minus one minute's allowance back to full takes two minutes.
      redis.call('PEXPIRE', KEYS[2*i-1], 121000)
    end
    if conc > 0 then
      redis.call('ZADD', KEYS[2*i], now + lease_ms, lease)
      redis.call('PEXPIRE', KEYS[2*i], lease_ms * 2)
    end
  end
end
reply[1], reply[2], reply[3] = denied, limit, tostring(math.ceil(wait))
for i = 1, n do
  reply[2*i+2], reply[2*i+3] = tostring(r[i]), tostring(t[i])
end
return reply
"""
)

# KEYS: as for admit. ARGV: lease id, token delta (actual - estimate), then per scope rpm, tpm.
_RELEASE = (
    _PRELUDE
    + """
local lease, delta = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  local rpm, tpm = tonumber(ARGV[2*i+1]), tonumber(ARGV[2*i+2])
  if lease ~= '' then redis.call('ZREM', KEYS[2*i], lease) end
  if tpm > 0 and delta ~= 0 then
    local state = redis.call('HMGET', KEYS[2*i-1], 'r', 't', 'ts')
    local ts = tonumber(state[3])
    local r = refill(tonumber(state[1]), ts, rpm)
    local t = math.min(math.max(refill(tonumber(state[2]), ts, tpm) - delta, -tpm), tpm)
    redis.call('HSET', KEYS[2*i-1], 'r', tostring(r), 't', tostring(t), 'ts', now)
    redis.call('PEXPIRE', KEYS[2*i-1], 121000)
  end
end
return 1
"""
)

# KEYS: lease sets. ARGV: lease ms, then the lease id held in each set.
_RENEW = (
    _PRELUDE
    + """
local lease_ms = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease_ms, ARGV[i+1])
  redis.call('PEXPIRE', KEYS[i], lease_ms * 2)
end
return 1
"""
)


def split_prefix(url: str) -> tuple[str, str]:
    """Take our own ``prefix`` query parameter off the URL; redis-py would reject it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def without_password(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class RedisBackend:
    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
        lease_seconds: float = 60.0,
        retry_seconds: float = 1.0,
        timeout_seconds: float = 0.5,
        max_connections: int = 64,
    ) -> None:
        url, self.prefix = split_prefix(url)
        self._where = without_password(url)  # for log lines
        # Short timeouts: a Redis that stopped answering must cost one request half a second
        # per retry_seconds, not every request a TCP timeout. A blocking pool, because a burst
        # of requests must queue for a connection, not fail over: redis-py's default pool
        # raises past 100 connections. One script call takes Redis tens of microseconds, so a
        # few connections carry thousands of requests a second. The URL may override all this
        # (?max_connections=, ?socket_timeout=).
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
        )
        self._redis = redis.Redis.from_pool(pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._metrics = metrics
        self._clock = clock
        self._lease_ms = int(lease_seconds * 1000)
        self._retry_seconds = retry_seconds
        self._local = MemoryBackend(clock)
        self._down_until: float | None = None  # set while Redis is considered unreachable
        # Unique across replicas and restarts without asking Redis for a counter.
        replica = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._lease_ids = (f"{replica}-{n}" for n in itertools.count())
        # Leases this process holds, to renew: lease id → the lease sets it is in.
        self._leases: dict[str, list[str]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()
        self._set_up(True)

    # ---------------------------------------------------------------- the Backend protocol

    async def admit(self, scopes: Sequence[Scope], est_tokens: int) -> Admission:
        if self._down_until is not None:
            now = self._clock()
            if now < self._down_until:
                return await self._local.admit(scopes, est_tokens)
            # This request probes Redis; the others stay local until it has an answer, or
            # against a Redis that stopped answering they would all wait out the timeout.
            self._down_until = now + self._retry_seconds
        needs_lease = any(s.limits.concurrent > 0 for s in scopes)
        lease = next(self._lease_ids) if needs_lease else ""
        keys: list[str] = []
        args: list[Any] = [est_tokens, lease, self._lease_ms]
        for scope in scopes:
            keys += self._keys(scope)
            limits = scope.limits
            args += (limits.rpm, limits.tpm, limits.concurrent)
        try:
            reply = await self._admit(keys, args)
        except (RedisError, OSError) as exc:
            self._failed("admit", exc)
            return await self._local.admit(scopes, est_tokens)
        self._answered()
        denied = int(reply[0]) - 1
        levels = [(float(reply[i]), float(reply[i + 1])) for i in range(3, len(reply), 2)]
        if denied >= 0:
            limit: LimitName = reply[1].decode()
            return Admission(scopes, est_tokens, levels, int(reply[2]) / 1000, denied, limit)
        if lease:
            self._leases[lease] = keys[1::2]
            if self._renewer is None:
                self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        return Admission(scopes, est_tokens, levels, backend=self, lease=lease)

    async def release(self, admission: Admission, actual_tokens: int | None) -> None:
        delta = 0 if actual_tokens is None else actual_tokens - admission.est_tokens
        if admission.lease:
            self._leases.pop(admission.lease, None)
        elif not delta or not any(s.limits.tpm > 0 for s in admission.scopes):
            return
        # Shielded: a client that disconnects cancels its request's task, and the release in
        # that task's ``finally`` must still reach Redis or the slot stays taken until it expires.
        task = asyncio.get_running_loop().create_task(self._settle(admission, delta))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    def release_nowait(self, admission: Admission, actual_tokens: int | None) -> bool:
        return False  # every release is a round trip to Redis: await ``release``

    async def start(self) -> None:
        """Say at start-up, not at the first request, whether Redis answers."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._failed("start", exc)
        else:
            log.info("rate limits shared through %s (prefix %r)", self._where, self.prefix)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self._settling:
            await asyncio.wait(self._settling, timeout=2.0)
        await self._redis.aclose()

    # ----------------------------------------------------------------------------- internals

    def _keys(self, scope: Scope) -> tuple[str, str]:
        name = f"{scope.kind}:{scope.name}"
        return self.prefix + "b:" + name, self.prefix + "c:" + name

    async def _settle(self, admission: Admission, delta: int) -> None:
        keys: list[str] = []
        args: list[Any] = [admission.lease, delta]
        for scope in admission.scopes:
            keys += self._keys(scope)
            args += (scope.limits.rpm, scope.limits.tpm)
        try:
            await self._release(keys, args)
        except (RedisError, OSError) as exc:
            # The lease expires by itself; the token difference is lost, which errs towards
            # the estimate.
            self._failed("release", exc)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            if not self._leases:
                continue
            keys: list[str] = []
            args: list[Any] = [self._lease_ms]
            for lease, lease_keys in list(self._leases.items()):
                keys += lease_keys
                args += [lease] * len(lease_keys)
            try:
                await self._renew(keys, args)
            except (RedisError, OSError) as exc:
                self._failed("renew", exc)

    def _failed(self, op: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.ratelimit_backend_errors, op).inc()
        if self._down_until is None:
            log.warning(
                "rate limits: %s unreachable (%s: %s); each replica enforces limits on its own "
                "until it answers again",
                self._where,
                type(exc).__name__,
                exc,
            )
            self._set_up(False)
        self._down_until = self._clock() + self._retry_seconds

    def _answered(self) -> None:
        if self._down_until is not None:
            log.info("rate limits: %s answers again; limits are shared again", self._where)
            self._down_until = None
            self._set_up(True)

    def _set_up(self, up: bool) -> None:
        if self._metrics is not None:
            self._metrics.ratelimit_backend_up.set(1 if up else 0)
