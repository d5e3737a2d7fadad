"""The rate limits' policy: which scopes a request is subject to, and the bucket arithmetic.

Pure functions over bucket levels and immutable ``ScopeState`` values, with the clock passed
in; ``memory`` applies them to a dict and ``redis`` runs the same rules in Lua.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, TypeGuard

from gateway.config.schema import Limits, RateLimits
from gateway.identity import Identity

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
