"""Rate limits: token buckets for requests and tokens per minute, counters for concurrency.

Every limit is a token bucket that holds up to a minute's allowance and refills continuously
(``rpm / 60`` per second), so a client may burst a whole minute's worth and then proceeds at the
steady rate; there is no window edge where twice the limit gets through. A request is checked
against every scope that applies to it (its key, its agent, its model) and is admitted only if
all of them have room; otherwise nothing is taken from any of them, so a request denied by its
model's limit does not eat its key's budget.

Tokens are not known before the call, so an estimate is taken up front and the difference is
settled when the request ends (``Admission.release``): an overestimate is refunded, an
underestimate is charged, and a bucket may go into debt (down to minus one minute's allowance)
that later requests wait out. An estimate above a whole minute's allowance is admitted when the
bucket is full rather than refused forever: estimates are guesses (``max_tokens`` is an upper
bound), and the debt still holds the caller to the limit over time.

Policy lives in pure functions over bucket levels and immutable ``ScopeState`` values;
``MemoryBackend`` applies them to a dict and the Redis backend (``ratelimit_redis``) runs the
same rules in Lua.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Protocol, TypeGuard

from gateway.config import ConfigError, Limits, RateLimits
from gateway.identity import Identity
from gateway.metrics import Metrics

ScopeKind = Literal["key", "agent", "model"]
LimitName = Literal["requests", "tokens", "concurrent"]
Clock = Callable[[], float]

# A request denied for concurrency cannot know when a slot frees up; this is how long we ask
# clients to wait before trying again.
CONCURRENCY_RETRY_SECONDS = 1.0


# ---------------------------------------------------------------------------- pure bucket logic
#
# A bucket is a level and a capacity (a minute's allowance), refilled at capacity/60 per second.
# Levels are plain floats and states plain tuples, and ``check`` and ``settle`` below work the
# buckets out inline rather than through helpers: they run for every scope of every request,
# where building objects and calling functions was most of what they cost.


def refill(level: float, capacity: int, elapsed: float) -> float:
    level += elapsed * capacity / 60
    return capacity if level > capacity else level


def seconds_to_full(level: float, capacity: int) -> float:
    """What OpenAI calls the reset time: when the limit is back to its initial state."""
    return max(capacity - level, 0.0) * 60 / capacity


# ------------------------------------------------------------------------------- scopes


class Scope(NamedTuple):
    kind: ScopeKind
    name: str
    limits: Limits


def limited(limits: Limits | None) -> TypeGuard[Limits]:
    return limits is not None and (limits.rpm > 0 or limits.tpm > 0 or limits.concurrent > 0)


def scopes_for(config: RateLimits, identity: Identity, model: str) -> tuple[Scope, ...]:
    """The limits one request is subject to.

    Keys use their own limits or ``default_key``; keyless local callers and the admin key have
    no key scope (they are the operator), but agent and model limits apply to everyone: model
    limits protect an engine, not a budget.
    """
    scopes: list[Scope] = []
    if identity.key_id is not None and not identity.is_admin:
        key_limits = identity.limits if identity.limits is not None else config.default_key
        if limited(key_limits):
            scopes.append(Scope("key", identity.key_id, key_limits))
    agents = config.agents
    if agents:
        agent_limits = agents.get(identity.agent_id) or agents.get("*")
        if limited(agent_limits):
            scopes.append(Scope("agent", identity.agent_id, agent_limits))
    model_limits = config.models.get(model) if config.models else None
    if limited(model_limits):
        scopes.append(Scope("model", model, model_limits))
    return tuple(scopes)


def estimate_tokens(body_bytes: int, max_tokens: int | None) -> int:
    """A cheap upper-ish guess before the call: ~4 bytes of JSON per prompt token plus the cap.

    It only has to be in the right range: ``Admission.release`` settles the real usage.
    """
    return body_bytes // 4 + (max_tokens or 0)


# ---------------------------------------------------------------------- one decision, pure


# One scope's counters, the same four fields the Redis backend keeps in a hash: request bucket
# level, token bucket level, when both were last refilled (on the caller's clock), in flight.
ScopeState = tuple[float, float, float, int]

# One scope's verdict: the state after taking (to be stored only if every scope of the request
# has room), seconds to wait (0.0 when admitted) and the limit that denied.
Check = tuple[ScopeState, float, LimitName | None]


def fresh(limits: Limits, now: float) -> ScopeState:
    """A scope nobody has used lately: full buckets, nothing in flight."""
    return (limits.rpm, limits.tpm, now, 0)


def refilled(limits: Limits, state: ScopeState, now: float) -> ScopeState:
    requests, tokens, updated_at, inflight = state
    # A clock that steps back (a test's, or after a restart) must not drain the buckets.
    elapsed = now - updated_at if now > updated_at else 0.0
    if limits.rpm > 0:
        requests = refill(requests, limits.rpm, elapsed)
    if limits.tpm > 0:
        tokens = refill(tokens, limits.tpm, elapsed)
    return (requests, tokens, now, inflight)


def check(limits: Limits, state: ScopeState, est_tokens: int, now: float) -> Check:
    """One scope's verdict on one request; the longest wait among its limits wins.

    Each bucket is refilled for the time since the last update, then takes its amount if that
    fits. An amount above capacity (an estimate above a whole minute's allowance) fits only a
    full bucket and leaves it in debt, down to minus one capacity, which later requests wait
    out. A request that does not fit takes nothing and learns how long until it would.
    """
    requests, tokens, updated_at, inflight = state
    # A clock that steps back (a test's, or after a restart) must neither drain nor fill.
    elapsed = now - updated_at if now > updated_at else 0.0
    wait = 0.0
    limit: LimitName | None = None
    rpm = limits.rpm
    if rpm > 0:
        requests += elapsed * rpm / 60
        if requests > rpm:
            requests = rpm
        if requests >= 1:
            requests -= 1
        else:
            wait, limit = (1 - requests) * 60 / rpm, "requests"
    tpm = limits.tpm
    if tpm > 0:
        tokens += elapsed * tpm / 60
        if tokens > tpm:
            tokens = tpm
        need = est_tokens if est_tokens < tpm else tpm
        if tokens >= need:
            tokens -= est_tokens
            if tokens < -tpm:
                tokens = -tpm
        elif (need - tokens) * 60 / tpm > wait:
            wait, limit = (need - tokens) * 60 / tpm, "tokens"
    concurrent = limits.concurrent
    if concurrent > 0:
        if inflight < concurrent:
            inflight += 1
        elif CONCURRENCY_RETRY_SECONDS > wait:
            wait, limit = CONCURRENCY_RETRY_SECONDS, "concurrent"
    return (requests, tokens, now, inflight), wait, limit


def settle(limits: Limits, state: ScopeState, token_delta: int, now: float) -> ScopeState:
    """A request ended: free its slot and charge (or refund) what its estimate got wrong.

    The token bucket is refilled up to now first, then charged: a refund never lifts it above
    capacity, and a charge may run into debt down to minus one minute's allowance (so that one
    absurd usage report cannot lock a caller out for longer than two minutes).
    """
    requests, tokens, updated_at, inflight = state
    if inflight > 0 and limits.concurrent > 0:
        inflight -= 1
    tpm = limits.tpm
    if token_delta and tpm > 0:
        elapsed = now - updated_at if now > updated_at else 0.0
        rpm = limits.rpm
        if rpm > 0:
            requests += elapsed * rpm / 60
            if requests > rpm:
                requests = rpm
        tokens += elapsed * tpm / 60
        tokens = (tpm if tokens > tpm else tokens) - token_delta
        tokens = tpm if tokens > tpm else -tpm if tokens < -tpm else tokens
        updated_at = now
    return (requests, tokens, updated_at, inflight)


# ------------------------------------------------------------------------ admission result


class Backend(Protocol):
    """Where bucket state lives: this process, or a store shared by every replica."""

    async def admit(self, scopes: Sequence[Scope], est_tokens: int) -> Admission: ...

    async def release(self, admission: Admission, actual_tokens: int | None) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Admission:
    """The answer to one request: allowed or not, why, and what to tell the client.

    Hold on to it until the request ends and call ``release`` exactly once (again is harmless).
    """

    __slots__ = (
        "_backend",
        "_released",
        "allowed",
        "denied_at",
        "denied_limit",
        "est_tokens",
        "lease",
        "levels",
        "retry_after",
        "scopes",
    )

    def __init__(
        self,
        scopes: Sequence[Scope],
        est_tokens: int,
        levels: Sequence[tuple[float, ...]],
        retry_after: float = 0.0,
        denied_at: int = -1,
        denied_limit: LimitName | None = None,
        backend: Backend | None = None,
        lease: str = "",
    ) -> None:
        self.scopes = scopes
        self.est_tokens = est_tokens
        # Per scope, (requests left, tokens left, ...) after this request; before it if denied.
        self.levels = levels
        self.allowed = denied_at < 0
        self.retry_after = retry_after
        self.denied_at = denied_at
        self.denied_limit = denied_limit
        self.lease = lease
        self._backend = backend
        self._released = False

    @property
    def denied_by(self) -> Scope | None:
        """The most constraining scope: the one that asks for the longest wait."""
        return self.scopes[self.denied_at] if self.denied_at >= 0 else None

    async def release(self, actual_tokens: int | None = None) -> None:
        """Return the concurrency slot and settle tokens; None keeps the estimate as charged."""
        if self.release_nowait(actual_tokens):
            return
        assert self._backend is not None
        self._released = True
        await self._backend.release(self, actual_tokens)

    def release_nowait(self, actual_tokens: int | None = None) -> bool:
        """``release`` where it needs no await; False: nothing done, await ``release`` instead.

        The request path tries this first: with the in-memory backend it saves a coroutine.
        """
        backend = self._backend
        if self._released or not self.allowed or backend is None:
            return True
        if not isinstance(backend, MemoryBackend):
            return False
        self._released = True
        backend.release_now(self, actual_tokens)
        return True

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-* for the tightest scope of each kind, and Retry-After if denied.

        The tightest scope is the one with the fewest requests (tokens) left: the first to say no.
        """
        rpm = tpm = 0
        requests_left = tokens_left = 0.0
        for scope, level in zip(self.scopes, self.levels, strict=True):
            limits = scope.limits
            if limits.rpm > 0 and (not rpm or level[0] < requests_left):
                rpm, requests_left = limits.rpm, level[0]
            if limits.tpm > 0 and (not tpm or level[1] < tokens_left):
                tpm, tokens_left = limits.tpm, level[1]
        out: list[tuple[bytes, bytes]] = []
        if rpm:
            _quota_headers(out, _REQUEST_HEADERS, rpm, requests_left)
        if tpm:
            _quota_headers(out, _TOKEN_HEADERS, tpm, tokens_left)
        if not self.allowed:
            # The OpenAI SDKs read retry-after-ms first; HTTP's Retry-After is whole seconds.
            out.append((b"retry-after", str(max(_ceil(self.retry_after), 1)).encode()))
            out.append((b"retry-after-ms", str(_ceil(self.retry_after * 1000)).encode()))
        return out

    def message(self) -> str:
        """An error message in the spirit of OpenAI's 429 text."""
        scope = self.denied_by
        if scope is None:
            return "request admitted"
        limits = scope.limits
        what = {
            "requests": f"{limits.rpm} requests per minute",
            "tokens": f"{limits.tpm} tokens per minute (this request: ~{self.est_tokens})",
            "concurrent": f"{limits.concurrent} requests at once",
        }[self.denied_limit or "requests"]
        return (
            f"Rate limit reached for {scope.kind} {scope.name!r}: {what}. "
            f"Please try again in {format_duration(self.retry_after)}."
        )


_REQUEST_HEADERS = (
    b"x-ratelimit-limit-requests",
    b"x-ratelimit-remaining-requests",
    b"x-ratelimit-reset-requests",
)
_TOKEN_HEADERS = (
    b"x-ratelimit-limit-tokens",
    b"x-ratelimit-remaining-tokens",
    b"x-ratelimit-reset-tokens",
)


def _quota_headers(
    out: list[tuple[bytes, bytes]], names: tuple[bytes, bytes, bytes], capacity: int, left: float
) -> None:
    out.append((names[0], b"%d" % capacity))
    out.append((names[1], b"%d" % (left if left > 0 else 0)))
    out.append((names[2], format_duration(seconds_to_full(left, capacity)).encode()))


def format_duration(seconds: float) -> str:
    """Go's duration style, as OpenAI's reset headers use it: "20ms", "1s", "1m26.4s", "6m0s".

    Rounded up to the millisecond so that a client waiting exactly this long is never early.
    """
    ms = _ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, frac = divmod(ms, 1000)
    text = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    return f"{minutes}m{text}s" if minutes else f"{text}s"


def _ceil(value: float) -> int:
    """Round up, but not for float noise: a 20 s wait computed as 20.000000000000004 is 20."""
    return max(math.ceil(value - 1e-6), 0)


# ----------------------------------------------------------------------- in-memory backend


class MemoryBackend:
    """Bucket state in a dict of this process.

    Used only from the event loop thread, and ``admit`` never awaits between reading and
    writing the state, so every decision is atomic without a lock: with ``concurrent: N``
    exactly N of M simultaneous requests get in.
    """

    # Sweep idle scopes once the table has grown past this (agent ids come from callers).
    _SWEEP_FLOOR = 4096

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[tuple[str, str], ScopeState] = {}
        self._sweep_at = self._SWEEP_FLOOR

    async def admit(self, scopes: Sequence[Scope], est_tokens: int) -> Admission:
        return self.admit_now(scopes, est_tokens)

    def admit_now(self, scopes: Sequence[Scope], est_tokens: int) -> Admission:
        now = self._clock()
        states = self._states
        after: list[ScopeState] = []
        denied_at, wait, denied_limit = -1, 0.0, None
        for kind, name, limits in scopes:
            state, retry_after, limit = check(
                limits, states.get((kind, name)) or fresh(limits, now), est_tokens, now
            )
            # The most constraining scope is the one asking for the longest wait.
            if limit is not None and (denied_at < 0 or retry_after > wait):
                denied_at, wait, denied_limit = len(after), retry_after, limit
            after.append(state)
        if denied_at >= 0:
            # All or nothing: nothing is written; the levels shown are those before the request.
            shown = [
                refilled(s.limits, states.get((s.kind, s.name)) or fresh(s.limits, now), now)
                for s in scopes
            ]
            return Admission(scopes, est_tokens, shown, wait, denied_at, denied_limit)
        for (kind, name, _), state in zip(scopes, after, strict=True):
            states[kind, name] = state
        if len(states) > self._sweep_at:
            self._sweep(now)
        return Admission(scopes, est_tokens, after, backend=self)

    async def release(self, admission: Admission, actual_tokens: int | None) -> None:
        self.release_now(admission, actual_tokens)

    def release_now(self, admission: Admission, actual_tokens: int | None) -> None:
        now = self._clock()
        delta = 0 if actual_tokens is None else actual_tokens - admission.est_tokens
        states = self._states
        for kind, name, limits in admission.scopes:
            if limits.concurrent > 0 or (delta and limits.tpm > 0):
                state = states.get((kind, name)) or fresh(limits, now)
                states[kind, name] = settle(limits, state, delta, now)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _sweep(self, now: float) -> None:
        """Forget scopes that are full and idle: they are the same as scopes never seen."""
        idle = [
            key
            for key, (_, _, updated_at, inflight) in self._states.items()
            if inflight == 0 and now - updated_at > 120.0
        ]
        for key in idle:
            del self._states[key]
        self._sweep_at = max(self._SWEEP_FLOOR, 2 * len(self._states))


# ------------------------------------------------------------------------------- facade


class Limiter:
    """What the request path talks to: which limits apply, admit, and count the refusals.

    ``admission = await limiter.admit(limiter.scopes(identity, model), est_tokens)``; if
    ``admission.allowed`` is false answer 429 with ``admission.headers()`` and
    ``admission.message()``, else forward and ``await admission.release(actual_tokens)`` in a
    ``finally``. The request path tries ``admit_nowait`` and ``release_nowait`` first, which
    answer without a coroutine when the state is in this process.
    """

    _SCOPE_CACHE_SIZE = 10_000

    def __init__(
        self, config: RateLimits, backend: Backend, metrics: Metrics | None = None
    ) -> None:
        self._config = config
        self._backend = backend
        self._metrics = metrics
        # Nothing limited in routing.yaml: scopes() is two attribute checks for keys without
        # limits of their own, and admit() one branch returning a shared answer.
        self._enabled = bool(limited(config.default_key) or config.agents or config.models)
        self._unlimited = Admission((), 0, ())
        self._memory = backend if isinstance(backend, MemoryBackend) else None
        self._scopes: dict[tuple[object, ...], tuple[Scope, ...]] = {}

    @classmethod
    def from_config(
        cls, config: RateLimits, metrics: Metrics | None = None, clock: Clock = time.monotonic
    ) -> Limiter:
        backend_url = config.backend
        if backend_url == "memory":
            return cls(config, MemoryBackend(clock), metrics)
        if backend_url.startswith(("redis://", "rediss://", "unix://")):
            from gateway.ratelimit_redis import RedisBackend

            return cls(config, RedisBackend(backend_url, metrics=metrics, clock=clock), metrics)
        raise ConfigError(
            f"limits.backend: expected 'memory' or a redis:// URL, got {backend_url!r}"
        )

    def scopes(self, identity: Identity, model: str) -> tuple[Scope, ...]:
        """``model`` is the logical model's name as ``limits.models`` spells it."""
        if not self._enabled and identity.limits is None:
            return ()
        # The same callers come back all the time; working their scopes out costs ten times
        # this lookup. Bounded because agent ids come from callers.
        key = (identity.key_id, identity.is_admin, identity.limits, identity.agent_id, model)
        found = self._scopes.get(key)
        if found is None:
            if len(self._scopes) >= self._SCOPE_CACHE_SIZE:
                self._scopes.clear()
            found = self._scopes[key] = scopes_for(self._config, identity, model)
        return found

    async def admit(self, scopes: Sequence[Scope], est_tokens: int = 0) -> Admission:
        return self.admit_nowait(scopes, est_tokens) or self._counted(
            await self._backend.admit(scopes, est_tokens)
        )

    def admit_nowait(self, scopes: Sequence[Scope], est_tokens: int = 0) -> Admission | None:
        """``admit`` without awaiting, where the answer is in this process; else None.

        The request path tries this first: with the in-memory backend it saves a coroutine per
        request, and ``admit`` would decide exactly the same.
        """
        if not scopes:
            return self._unlimited
        if self._memory is None:
            return None
        return self._counted(self._memory.admit_now(scopes, est_tokens))

    def _counted(self, admission: Admission) -> Admission:
        if not admission.allowed and self._metrics is not None:
            scope = admission.scopes[admission.denied_at]
            m = self._metrics
            m.child(m.ratelimit_rejections, scope.kind, admission.denied_limit or "").inc()
        return admission

    async def start(self) -> None:
        await self._backend.start()

    async def close(self) -> None:
        await self._backend.close()
