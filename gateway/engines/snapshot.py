"""What the engine scheduler reads and what it decides: a ``Snapshot`` in, a ``Plan`` out.

Plain records, apart from the planning in ``scheduler.py``: the supervisor's owner fills a
snapshot from its own state, and applies the plan the scheduler returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config.engines import Engines, Role
from gateway.engines.memory import Footprint
from gateway.engines.policy import Topology
from gateway.engines.states import EngineState, EngineStatus


@dataclass(frozen=True, slots=True)
class Waiting:
    """A queued request: the role it waits for, and since when (monotonic seconds)."""

    role: str
    arrived: float
    # engines.agent_priority of its agent: added to its role's priority while it waits.
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the owner knows at one moment; the scheduler only reads it."""

    roles: Mapping[str, Role]
    topology: Topology
    config: Engines
    status: Mapping[str, EngineStatus]
    # Unanswered requests, oldest first; a plan refers to them by index.
    waiters: Sequence[Waiting]
    # Roles with a start or stop running.
    busy: frozenset[str] = frozenset()
    # Victims of a decided swap (from the previous pass): they take no new requests.
    draining: frozenset[str] = frozenset()
    # Roles someone asked to unload.
    unloading: frozenset[str] = frozenset()
    # The role an explicit switch asked for, until it is ready.
    pinned: str | None = None
    # Free memory in MB; read only when a role states its need (reading it costs a syscall).
    free_mb: Callable[[], int] = lambda: 0
    # Roles to load as soon as there is room for them (preload, persistent group members): they
    # never evict anything, and wait behind requests and switches.
    wanted: frozenset[str] = frozenset()
    # Each role's measured or estimated size and load time (``memory.py``); without one, a
    # role needs its configured ``memory_mb``.
    footprints: Mapping[str, Footprint] = field(default_factory=dict)
    # Roles whose engine can sleep instead of stopping (``process.Sleeper``).
    sleepers: frozenset[str] = frozenset()
    # Whether the memory planned with is host RAM (no GPU): then what sleeping engines keep in
    # RAM (vLLM's level 1 sleep moves the weights there) is taken, and stopping them frees it.
    on_host: Callable[[], bool] = lambda: True

    def held_mb(self, host: bool) -> int:
        """What the engines hold that the machine already shows as used (``engines.
        memory_budget_mb`` subtracts it): the ready and stopping ones, the sleeping ones too
        when memory is host RAM. Starting ones are counted by the planner itself."""
        return sum(self.need_mb(r) for r in self.holding(host))

    def holding(self, host: bool) -> list[str]:
        kept = (EngineState.READY, EngineState.STOPPING)
        return [
            r
            for r, s in self.status.items()
            if s.state in kept or (host and s.state is EngineState.SLEEPING)
        ]

    def need_mb(self, role: str) -> int:
        configured = self.roles[role].memory_mb
        footprint = self.footprints.get(role)
        return footprint.need_mb(configured) if footprint is not None else configured

    def reload_seconds(self, role: str) -> float:
        footprint = self.footprints.get(role) or Footprint()
        return footprint.reload_seconds(self.roles[role].memory_mb)


@dataclass
class Plan:
    """What one pass decided; the owner applies it in this order: redirects, refusals, grants,
    switch retargets and answers, then aborts, stops and starts."""

    # Waiter index -> (role now serving it, the note its lease carries).
    redirects: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Waiter index -> why it is refused (an EngineUnavailable message).
    refusals: dict[int, str] = field(default_factory=dict)
    # Waiter indexes granted a lease, in grant order.
    grants: list[int] = field(default_factory=list)
    # (role, result) for every pending switch to ``role``, in order.
    answers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # (role, fallback, reason): pending switches to ``role`` now wait for ``fallback`` instead;
    # applied before ``answers``.
    retargets: list[tuple[str, str, str]] = field(default_factory=list)
    pinned: str | None = None
    # Roles whose swap timer starts now (unless it already runs).
    switch_started: list[str] = field(default_factory=list)
    draining: set[str] = field(default_factory=set)
    aborts: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    # Evicted or idle roles put to sleep instead of stopped (applied with the stops).
    sleeps: list[str] = field(default_factory=list)
    starts: list[str] = field(default_factory=list)
    # For the owner's log: why roles are unloaded to make memory for another.
    evictions: list[str] = field(default_factory=list)
    # For the owner's log: (reason, fallback role) and (role, idle seconds).
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    idle: list[tuple[str, float]] = field(default_factory=list)
    # (engines.default_role, seconds nothing was asked of any role): it is loaded again.
    returns: list[tuple[str, float]] = field(default_factory=list)
