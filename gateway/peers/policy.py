"""Which copy of a role goes first, and what a peer's failure means: pure functions.

A role may be served here and by peers. The copy that has it loaded goes first (the shortest
queue, then this machine, breaking ties), then the one that can load it soonest (loading, then
asleep, then stopped), then the fallback chain (the model's other targets: a cloud model, in
the router's order), and last the copies in doubt (failed, unreachable, just failed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.config.peers import PEER_PREFIX, Action, Failures
from gateway.config.upstreams import Target
from gateway.errors import (
    UpstreamBodyTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHungUp,
    UpstreamStatus,
    UpstreamTimeout,
)
from gateway.router import target_key

FailureClass = Literal["connect", "headers_timeout", "body_timeout", "status_5xx", "status_429"]

# How soon a copy in each engine state can answer: lower is sooner.
READINESS: Mapping[str, int] = {
    "ready": 0,
    "starting": 1,
    "sleeping": 2,
    "stopped": 3,
    "stopping": 3,
    "failed": 4,
}
# From here on a copy is in doubt: tried only after the fallback chain.
DOUBTFUL = 4
# A peer not heard from (down, or never reached): after every copy that is known.
UNKNOWN = 5
# Added for a copy that failed a moment ago (the target book's cooldown).
COOLING = 10


@dataclass(frozen=True, slots=True)
class RoleView:
    """One role on one turnout, as its /engine/status or /engine/events last said."""

    state: str
    queue: int = 0


Rank = tuple[int, int, int]


def rank(view: RoleView | None, remote: bool, cooling: bool) -> Rank:
    """Sort key of one copy of a role: readiness, then queue depth, then this machine first."""
    readiness = UNKNOWN if view is None else READINESS.get(view.state, UNKNOWN)
    queue = view.queue if view is not None else 0
    return (readiness + (COOLING if cooling else 0), queue, int(remote))


def order(planned: Sequence[Target], ranks: Mapping[str, Rank]) -> list[Target]:
    """The copies of the role that can answer (``ranks`` holds every copy) sorted first; then
    the other targets (the fallback chain) in the router's order; then the copies in doubt
    (failed, not heard from, or failed a moment ago), sorted, still tried as a last resort.
    Ties keep the router's order."""
    good: list[Target] = []
    doubtful: list[Target] = []
    chain: list[Target] = []
    for target in planned:
        found = ranks.get(target_key(target))
        if found is None:
            chain.append(target)
        else:
            (good if found[0] < DOUBTFUL else doubtful).append(target)
    if not good and not doubtful:
        return chain
    return _ranked(good, ranks) + chain + _ranked(doubtful, ranks)


def _ranked(targets: list[Target], ranks: Mapping[str, Rank]) -> list[Target]:
    return sorted(targets, key=lambda t: ranks[target_key(t)])


def is_peer(target: Target) -> bool:
    return target.provider.startswith(PEER_PREFIX)


def without_peers(planned: Sequence[Target]) -> list[Target]:
    """For a request that came from a peer: it never goes to a peer again, so two turnouts
    that name each other cannot pass a request back and forth."""
    return [t for t in planned if not is_peer(t)]


def classify(error: UpstreamError) -> FailureClass | None:
    """The failure class of one attempt; None for what the classes do not cover (a 4xx, which
    is the client's answer from any peer, or a broken answer, which falls back as usual)."""
    if isinstance(error, UpstreamConnectError | UpstreamHungUp):
        return "connect"
    if isinstance(error, UpstreamBodyTimeout):
        return "body_timeout"
    if isinstance(error, UpstreamTimeout):
        return "headers_timeout"
    if isinstance(error, UpstreamStatus):
        if error.upstream_status == 429:
            return "status_429"
        if error.retryable:
            return "status_5xx"
    return None


def action(failures: Failures, error: UpstreamError) -> Action | None:
    """What the peer's configuration says to do after ``error``; None: the usual rule."""
    kind = classify(error)
    if kind is None:
        return None
    chosen: Action = getattr(failures, kind)
    return chosen
