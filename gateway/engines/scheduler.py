"""The engine scheduler: what the supervisor's owner does next, decided without doing any of it.

``plan`` reads a ``Snapshot`` (each role's status, the queued requests, the operations running,
the clock) and returns a ``Plan``: which queued requests to grant, move to a fallback role or
refuse, which roles to start, stop or abort, how explicit switches are answered. It never logs,
never resolves a future, never touches a process or reads the clock: the owner loop in
``supervisor.py`` applies the plan (those are its effects), and ``tests/test_engine_scheduler.py``
tests the decisions without any. The policy it composes lives in ``policy.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Engines, Role
from gateway.engines.policy import (
    RoleView,
    Topology,
    evictions,
    fits,
    may_evict_now,
    next_to_load,
    pick_fallback,
)
from gateway.engines.states import EngineState, EngineStatus


@dataclass(frozen=True, slots=True)
class Waiting:
    """A queued request: the role it waits for, and since when (monotonic seconds)."""

    role: str
    arrived: float


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


@dataclass
class Plan:
    """What one pass decided; the owner applies it in this order: redirects, refusals, grants,
    switch answers, then aborts, stops and starts."""

    # Waiter index -> (role now serving it, the note its lease carries).
    redirects: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Waiter index -> why it is refused (an EngineUnavailable message).
    refusals: dict[int, str] = field(default_factory=dict)
    # Waiter indexes granted a lease, in grant order.
    grants: list[int] = field(default_factory=list)
    # (role, result) for every pending switch to ``role``, in order.
    answers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pinned: str | None = None
    # Roles whose swap timer starts now (unless it already runs).
    switch_started: list[str] = field(default_factory=list)
    draining: set[str] = field(default_factory=set)
    aborts: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    starts: list[str] = field(default_factory=list)
    # For the owner's log: (reason, fallback role) and (role, idle seconds).
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    idle: list[tuple[str, float]] = field(default_factory=list)


def views(snapshot: Snapshot, now: float) -> dict[str, RoleView]:
    """Each role as the pure policy sees it."""
    return _views(snapshot, now, [w.role for w in snapshot.waiters], None, None)


def _views(
    snapshot: Snapshot,
    now: float,
    roles_of: Sequence[str | None],
    inflight: Mapping[str, int] | None,
    last_used: Mapping[str, float] | None,
) -> dict[str, RoleView]:
    waiting: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for w, role in zip(snapshot.waiters, roles_of, strict=True):
        if role is None:
            continue
        waiting[role] = waiting.get(role, 0) + 1
        oldest[role] = max(oldest.get(role, 0.0), now - w.arrived)
    return {
        name: RoleView(
            loaded=s.loaded,
            ready=s.state is EngineState.READY,
            busy=s.state in (EngineState.STARTING, EngineState.STOPPING),
            inflight=inflight[name] if inflight is not None else s.inflight,
            waiting=waiting.get(name, 0),
            oldest_wait=oldest.get(name, 0.0),
            last_used=last_used[name] if last_used is not None else s.last_used,
            memory_mb=snapshot.roles[name].memory_mb,
        )
        for name, s in snapshot.status.items()
    }


def must_make_room(snapshot: Snapshot, role: str, now: float) -> bool:
    """A ready role still has peers to evict when its group was over-full (a config change)."""
    return bool(evictions(role, views(snapshot, now), snapshot.topology))


def next_wake(snapshot: Snapshot, now: float) -> float | None:
    """When the owner must look again even if no message arrives."""
    times: list[float] = []
    waiting = {w.role for w in snapshot.waiters}
    for name, role in snapshot.roles.items():
        status = snapshot.status[name]
        if role.ttl_seconds > 0 and status.state is EngineState.READY and status.inflight == 0:
            times.append(status.last_used + role.ttl_seconds)
        if status.state is EngineState.FAILED and name in waiting:
            times.append(status.retry_at)
    for waiter in snapshot.waiters:
        times.append(waiter.arrived + snapshot.config.max_wait_seconds)
    future = [t for t in times if t > now - 1.0]
    return min(future) if future else None


def plan(snapshot: Snapshot, now: float) -> Plan:
    return _Pass(snapshot, now).run()


class _Pass:
    """One planning pass over a snapshot; its working copies are its own, never the owner's."""

    def __init__(self, snapshot: Snapshot, now: float) -> None:
        self.s = snapshot
        self.now = now
        self.plan = Plan(pinned=snapshot.pinned)
        # The role each waiter now waits for; None once it is answered in this pass.
        self.role_of: list[str | None] = [w.role for w in snapshot.waiters]
        self.inflight = {n: st.inflight for n, st in snapshot.status.items()}
        self.last_used = {n: st.last_used for n, st in snapshot.status.items()}
        self._free: int | None = None

    def run(self) -> Plan:
        s, plan = self.s, self.plan
        # Admit before planning: a role that just became ready serves the requests it was
        # loaded for before any eviction is considered. Planning first would let a starving
        # peer evict it at once, and two starving roles would then swap forever (livelock).
        self.admit(s.draining | s.unloading)
        current = _views(s, self.now, self.role_of, self.inflight, self.last_used)
        plan.draining = set(s.unloading)
        self.plan_loads(current)
        for role in sorted(s.unloading):
            status = s.status[role]
            if status.state is EngineState.STARTING:
                plan.aborts.append(role)
            elif status.loaded and self.inflight[role] == 0 and role not in s.busy:
                plan.stops.append(role)
        self.plan_idle_unloads(current)
        # A decided swap keeps its victims draining across passes (see plan_loads); roles no
        # longer wanted out take requests again right away.
        plan.draining = plan.draining - s.unloading
        self.admit(frozenset(plan.draining) | s.unloading)
        plan.stops = list(dict.fromkeys(plan.stops))
        return plan

    def free_mb(self) -> int:
        if self._free is None:
            self._free = self.s.free_mb()
        return self._free

    def admit(self, draining: frozenset[str]) -> None:
        for i, role in enumerate(self.role_of):
            if role is None or role in draining:
                continue
            if self.s.status[role].state is not EngineState.READY:
                continue
            self.inflight[role] += 1
            self.last_used[role] = self.now
            self.plan.grants.append(i)
            self.role_of[i] = None

    def blocked(self, role: str) -> bool:
        status = self.s.status[role]
        return status.state is EngineState.FAILED and self.now < status.retry_at

    def group_busy(self, role: str, overlap: bool = False) -> bool:
        """A start or stop is running in the group. With ``overlap``, peers' stops don't count."""
        busy = self.s.busy
        if role in busy:
            return True
        return any(
            p in busy and not (overlap and self.s.status[p].state is EngineState.STOPPING)
            for p in self.s.topology.peers(role)
        )

    def fits_alongside(self, target: str) -> bool:
        """Can ``target`` start while its evicted peers are still exiting?

        Only with a memory estimate that fits in what is free right now (the victims still
        hold theirs): then the new engine loads during the old one's shutdown instead of after
        it, which takes the old engine's stop time (tens of ms to seconds) off every swap.
        """
        need = self.s.roles[target].memory_mb
        return need > 0 and fits(need, self.free_mb(), 0)

    def plan_loads(self, current: dict[str, RoleView]) -> None:
        s, plan = self.s, self.plan
        claimed: set[str] = set()
        # An explicit switch skips the restart backoff: a person asked for it just now.
        pinned = plan.pinned
        for target in next_to_load(current, pinned, lambda r: r != pinned and self.blocked(r)):
            group = s.topology.group_of.get(target, target)
            if group in claimed or s.status[target].state in (
                EngineState.STARTING,
                EngineState.STOPPING,
            ):
                continue
            claimed.add(group)
            victims = evictions(target, current, s.topology)
            if victims is None:
                self.refuse(target, "its group is full of persistent roles")
                continue
            if not self.fits_or_redirect(target, victims):
                continue
            # Once decided, a swap stays decided: the victims keep draining even though their
            # queue refills, or a steady stream for them would starve the target for ever.
            decided = bool(victims) and all(v in s.draining for v in victims)
            urgent = target == plan.pinned
            if not decided and not may_evict_now(
                target, victims, current, s.config.max_wait_seconds, urgent
            ):
                continue
            # From here the swap is decided: no new requests for the victims until it is done.
            plan.draining.update(victims)
            if any(current[v].inflight for v in victims):
                continue
            overlap = bool(victims) and self.fits_alongside(target)
            if self.group_busy(target, overlap):
                continue
            plan.stops.extend(v for v in victims if s.status[v].state is EngineState.READY)
            if not victims or overlap:
                plan.starts.append(target)

    def fits_or_redirect(self, target: str, victims: list[str]) -> bool:
        roles, plan = self.s.roles, self.plan
        need = roles[target].memory_mb
        if need <= 0:
            return True
        free = self.free_mb()
        freed = sum(roles[v].memory_mb for v in victims)
        if fits(need, free, freed):
            return True
        loaded = self.s.status[target].loaded

        def fits_instead(other: str) -> bool:
            return fits(roles[other].memory_mb, free, freed + (need if loaded else 0))

        fallback = pick_fallback(target, roles, fits_instead)
        reason = f"role {target} needs {need} MB, {free + freed} MB available"
        if fallback is None:
            self.refuse(target, reason)
            if plan.pinned == target:
                plan.pinned = None
            plan.answers.append((target, {"status": "failed", "role": target, "error": reason}))
            return False
        plan.fallbacks.append((reason, fallback))
        for i, role in enumerate(self.role_of):
            if role == target:
                self.role_of[i] = fallback
                plan.redirects[i] = (fallback, f"{reason}; served by {fallback}")
        if plan.pinned == target:
            plan.answers.append(
                (
                    target,
                    {"status": "fallback", "role": fallback, "requested": target, "reason": reason},
                )
            )
            plan.pinned = fallback
            plan.switch_started.append(fallback)
        return False

    def refuse(self, role: str, reason: str) -> None:
        for i, waiting in enumerate(self.role_of):
            if waiting == role:
                self.plan.refusals[i] = f"role {role!r} cannot be loaded: {reason}"
                self.role_of[i] = None

    def plan_idle_unloads(self, current: dict[str, RoleView]) -> None:
        s = self.s
        for name, role in s.roles.items():
            view = current[name]
            if (
                role.ttl_seconds > 0
                and view.ready
                and view.inflight == 0
                and view.waiting == 0
                and name not in s.topology.persistent
                and name not in s.busy
                and self.now - view.last_used >= role.ttl_seconds
            ):
                self.plan.idle.append((name, self.now - view.last_used))
                self.plan.stops.append(name)
