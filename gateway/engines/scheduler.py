"""The engine scheduler: what the supervisor's owner does next, decided without doing any of it.

``plan`` reads a ``Snapshot`` (each role's status, the queued requests, the operations running,
the clock) and returns a ``Plan`` (both in ``snapshot.py``): which queued requests to grant, move
to a fallback role or refuse, which roles to start, stop or abort, how explicit switches are
answered. It never logs, never resolves a future, never touches a process or reads the clock:
the owner loop in ``supervisor.py`` applies the plan (those are its effects), and
``tests/test_engine_scheduler.py`` tests the decisions without any. The policy it composes lives
in ``policy.py`` (groups, turns: grouping, residency, priorities, the starvation bound),
``memory.py`` (what each role needs, which roles to unload for it) and ``idle.py`` (what
happens when nobody asks: idle unloads, the return to the default role).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from gateway.engines.idle import idle_unloads, last_activity, return_due, wake_times
from gateway.engines.memory import Candidate, cheapest_evictions, explain
from gateway.engines.policy import (
    RoleView,
    evictions,
    fits,
    may_evict_now,
    next_to_load,
    pick_fallback,
)
from gateway.engines.snapshot import Plan, Snapshot, Waiting
from gateway.engines.states import EngineState, EngineStatus

__all__ = ["Plan", "Snapshot", "Waiting", "must_make_room", "next_wake", "plan", "victims", "views"]


@dataclass(frozen=True, slots=True)
class Room:
    """How a role gets its memory: these roles unloaded first; ``wait``: for stops running."""

    victims: list[str]
    wait: bool = False
    # Why the victims beyond the group's were chosen (memory), for the owner's log.
    why: str = ""
    # Those victims: unloaded for their memory.
    extra: tuple[str, ...] = ()


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
    # A waiting role weighs as its most important request: its own priority plus the agent's.
    ranked: dict[str, int] = {}
    for w, role in zip(snapshot.waiters, roles_of, strict=True):
        if role is None:
            continue
        waiting[role] = waiting.get(role, 0) + 1
        oldest[role] = max(oldest.get(role, 0.0), now - w.arrived)
        mine = snapshot.roles[role].priority + w.priority
        ranked[role] = max(ranked.get(role, mine), mine)
    return {
        name: RoleView(
            loaded=s.loaded,
            ready=s.state is EngineState.READY,
            busy=s.state in (EngineState.STARTING, EngineState.STOPPING),
            inflight=inflight[name] if inflight is not None else s.inflight,
            waiting=waiting.get(name, 0),
            oldest_wait=oldest.get(name, 0.0),
            last_used=last_used[name] if last_used is not None else s.last_used,
            memory_mb=snapshot.need_mb(name),
            priority=ranked.get(name, snapshot.roles[name].priority),
            resident_seconds=_resident(s, now),
        )
        for name, s in snapshot.status.items()
    }


def _resident(status: EngineStatus, now: float) -> float:
    if status.state is not EngineState.READY or status.ready_at is None:
        return math.inf
    return now - status.ready_at


def must_make_room(snapshot: Snapshot, role: str, now: float) -> bool:
    """A ready role still has peers to evict when its group was over-full (a config change)."""
    return bool(victims(snapshot, role, now))


def victims(snapshot: Snapshot, role: str, now: float) -> list[str]:
    """The loaded roles a switch to ``role`` would unload: its group's peers without room
    beside it, then the roles of any group whose memory it needs. Roles with room stay."""
    group = evictions(role, views(snapshot, now), snapshot.topology) or []
    if snapshot.status[role].loaded:
        return group
    room = _Pass(replace(snapshot, pinned=role), now).room_for(role, group)
    return room.victims if room is not None else group


def next_wake(snapshot: Snapshot, now: float) -> float | None:
    """When the owner must look again even if no message arrives; ``now``: the clock of its
    last plan, which saw everything due by then (so nothing due then makes it spin)."""
    times = wake_times(snapshot)
    waiting = {w.role for w in snapshot.waiters}
    for name, status in snapshot.status.items():
        if status.state is EngineState.FAILED and name in waiting:
            times.append(status.retry_at)
    for waiter in snapshot.waiters:
        times.append(waiter.arrived + snapshot.config.max_wait_seconds)
    residency = snapshot.config.min_residency_seconds
    if snapshot.waiters and residency > 0:
        # A role held by its minimum residency may be evicted once it ends.
        times.extend(
            s.ready_at + residency
            for s in snapshot.status.values()
            if s.state is EngineState.READY and s.ready_at is not None
        )
    future = [t for t in times if t > now]
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
        self._host: bool | None = None
        # Roles stopped for their host RAM: they stop for good instead of going to sleep.
        self.for_memory: set[str] = set()

    def run(self) -> Plan:
        s, plan = self.s, self.plan
        # Admit before planning: a role that just became ready serves the requests it was
        # loaded for before any eviction is considered. Planning first would let a starving
        # peer evict it at once, and two starving roles would then swap forever (livelock).
        self.admit(s.draining | s.unloading)
        plan.draining = set(s.unloading)
        claimed = self.plan_loads()
        self.settle_pinned()
        self.plan_return(claimed)
        self.plan_wanted(claimed)
        for role in sorted(s.unloading):
            status = s.status[role]
            if status.state is EngineState.STARTING:
                plan.aborts.append(role)
            elif status.alive and self.inflight[role] == 0 and role not in s.busy:
                plan.stops.append(role)
        for role, idle in idle_unloads(s, self.current(), self.now):
            plan.idle.append((role, idle))
            plan.stops.append(role)
        # A decided swap keeps its victims draining across passes (see plan_load); roles no
        # longer wanted out take requests again right away.
        plan.draining = plan.draining - s.unloading
        self.admit(frozenset(plan.draining) | s.unloading)
        plan.stops = list(dict.fromkeys(plan.stops))
        # Sleep is cheaper than stop: an evicted or idle engine that can sleep keeps its
        # process and wakes fast; only an unload stops it for good.
        # Stopped for its host RAM (asleep already, or evicted for memory that is host RAM),
        # an engine stops for good: asleep, it would keep its weights in that RAM.
        plan.sleeps = [
            r
            for r in plan.stops
            if r in s.sleepers
            and r not in s.unloading
            and r not in self.for_memory
            and s.status[r].state is not EngineState.SLEEPING
        ]
        plan.stops = [r for r in plan.stops if r not in plan.sleeps]
        return plan

    def current(self) -> dict[str, RoleView]:
        return _views(self.s, self.now, self.role_of, self.inflight, self.last_used)

    def free_mb(self) -> int:
        """Free memory less what engines starting now will take: the machine does not show
        it yet, and two starts planned against the same free memory would overcommit it."""
        if self._free is None:
            self._free = self.s.free_mb()
            budget = self.s.config.memory_budget_mb
            if budget > 0:
                self._free = min(self._free, budget - self.s.held_mb(self.on_host()))
        starting = {r for r, st in self.s.status.items() if st.state is EngineState.STARTING}
        return self._free - sum(self.s.need_mb(r) for r in starting | set(self.plan.starts))

    def on_host(self) -> bool:
        if self._host is None:
            self._host = self.s.on_host()
        return self._host

    def asleep_on_host(self, role: str) -> bool:
        """Asleep with its weights in host RAM, the memory planned with: stopping it frees them."""
        return self.s.status[role].state is EngineState.SLEEPING and self.on_host()

    def admit(self, draining: frozenset[str]) -> None:
        # Strict FIFO (grouping off): no request passes an older one of its group still waiting.
        fifo, held = not self.s.config.grouping, set[str]()
        for i, role in enumerate(self.role_of):
            if role is None:
                continue
            group = self.s.topology.group_of.get(role, role)
            if (
                role in draining
                or self.s.status[role].state is not EngineState.READY
                or group in held
            ):
                if fifo:
                    held.add(group)
                continue
            self.inflight[role] += 1
            self.last_used[role] = self.now
            self.plan.grants.append(i)
            self.role_of[i] = None

    def held_back(self, role: str) -> bool:
        # An explicit switch skips the restart backoff: a person asked for it just now.
        return role != self.plan.pinned and self.blocked(role)

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
        need = self.s.need_mb(target)
        return need > 0 and fits(need, self.free_mb(), 0)

    def plan_loads(self) -> set[str]:
        """Decide each role to bring up, most urgent first; returns the groups claimed.

        A role moved to its fallback is planned again from the top, in this same pass: the
        fallback must start now, not when some later message happens to wake the owner (a
        switch from idle would otherwise wait for the next request, a request for its whole
        ``max_wait_seconds``).
        """
        claimed: set[str] = set()
        seen: set[str] = set()
        while True:
            order = next_to_load(
                self.current(),
                self.plan.pinned,
                self.held_back,
                self.s.config.max_wait_seconds,
                by_priority=self.s.config.grouping,
            )
            target = next((r for r in order if r not in seen), None)
            if target is None:
                return claimed
            seen.add(target)
            self.plan_load(target, claimed)

    def plan_load(self, target: str, claimed: set[str], urgent: bool = False) -> None:
        s, plan, cfg = self.s, self.plan, self.s.config
        group = s.topology.group_of.get(target, target)
        if group in claimed or s.status[target].state in (
            EngineState.STARTING,
            EngineState.STOPPING,
        ):
            return
        current = self.current()
        victims = evictions(target, current, s.topology)
        if victims is None:
            self.refuse(target, "its group is full of persistent roles")
            return
        room = self.room_for(target, victims)
        if room is None:
            return
        claimed.add(group)
        if room.wait:
            return
        victims = room.victims
        # A victim still starting has not served the requests it is loading for: deciding to
        # drain it now would evict it the moment it is ready, unused, and two starving roles
        # would then swap for ever (seen once starts overlap stops: issue 14).
        if any(s.status[v].state is EngineState.STARTING for v in victims):
            return
        # Once decided, a swap stays decided: the victims keep draining even though their
        # queue refills, or a steady stream for them would starve the target for ever.
        decided = bool(victims) and all(v in s.draining for v in victims)
        urgent = urgent or target == plan.pinned
        if not decided and not may_evict_now(
            target,
            victims,
            current,
            cfg.max_wait_seconds,
            urgent,
            cfg.min_residency_seconds,
            cfg.grouping,
        ):
            return
        # From here the swap is decided: no new requests for the victims until it is done.
        plan.draining.update(victims)
        if any(current[v].inflight for v in victims):
            return
        overlap = bool(victims) and self.fits_alongside(target)
        if self.group_busy(target, overlap):
            return
        stopping = [
            v for v in victims if s.status[v].state is EngineState.READY or self.asleep_on_host(v)
        ]
        plan.stops.extend(stopping)
        if stopping and room.why:
            plan.evictions.append(room.why)
            if self.on_host():
                # Asleep, an engine keeps its weights in host RAM: no memory would come back.
                self.for_memory.update(room.extra)
        if not victims or overlap:
            plan.starts.append(target)

    def settle_pinned(self) -> None:
        """A switch whose role is already ready with nothing left to evict is answered now
        (a fallback that was loaded when the switch fell back to it)."""
        plan, s = self.plan, self.s
        pinned = plan.pinned
        if pinned is None or s.status[pinned].state is not EngineState.READY:
            return
        if evictions(pinned, self.current(), s.topology):
            return
        plan.answers.append((pinned, {"status": "ready", "role": pinned}))
        plan.pinned = None

    def plan_return(self, claimed: set[str]) -> None:
        """Load ``engines.default_role`` again after idle, unloading the idle roles in its way
        (they are idle: nothing is queued or running anywhere, see ``return_due``)."""
        s, plan = self.s, self.plan
        due = return_due(s)
        role = s.config.default_role
        if due is None or self.now < due:
            return
        actions = len(plan.starts) + len(plan.stops)
        self.plan_load(role, claimed, urgent=True)
        if len(plan.starts) + len(plan.stops) > actions:
            plan.returns.append((role, self.now - last_activity(s)))

    def plan_wanted(self, claimed: set[str]) -> None:
        """Preloaded and persistent roles start once their group has room: they never evict."""
        s = self.s
        current = self.current()
        for role in s.roles:
            group = s.topology.group_of.get(role, role)
            if (
                role not in s.wanted
                or role in s.unloading
                or s.status[role].state is not EngineState.STOPPED
                or group in claimed
                or self.group_busy(role)
                or evictions(role, current, s.topology) != []
                or not fits(s.need_mb(role), self.free_mb(), 0)
            ):
                continue
            claimed.add(group)
            self.plan.starts.append(role)

    def room_for(self, target: str, victims: list[str]) -> Room | None:
        """Make room for ``target`` by memory; None when it went to a fallback or was refused.

        Its group's victims first; when their memory is not enough, loaded roles of any group
        too, the set that frees enough at the least reload cost (``memory.py``). Roles
        already stopping count as freed memory: the start then waits for them.
        """
        s = self.s
        need = s.need_mb(target)
        if need <= 0:
            return Room(victims)
        free = self.free_mb()
        freed = sum(s.need_mb(v) for v in victims)
        if fits(need, free, freed):
            return Room(victims)
        leaving = sum(
            s.need_mb(r)
            for r, st in s.status.items()
            if st.state is EngineState.STOPPING and r not in victims and r != target
        )
        if fits(need, free, freed + leaving):
            return Room(victims, wait=True)
        candidates = self.eviction_candidates(target, victims)
        short = need - free - freed - leaving
        extra = cheapest_evictions(short, candidates)
        if extra is not None:
            why = explain(target, need, short, extra, candidates)
            return Room(victims + extra, why=why, extra=tuple(extra))
        # Not now. With every other role that is not persistent unloaded, would it fit? Then
        # it waits (for starts to finish, busy groups to calm down); the max_wait bound holds
        # as those roles become candidates. If not, it cannot fit even alone: fall back now
        # rather than wait for memory that never comes.
        others = {r for r, st in s.status.items() if st.loaded or self.asleep_on_host(r)}
        others |= set(self.plan.starts)
        alone = free + sum(
            s.need_mb(r) for r in others if r != target and r not in s.topology.persistent
        )
        if fits(need, alone, 0):
            return Room(victims, wait=True)
        self.redirect(target, f"role {target} needs {need} MB, {alone} MB available")
        return None

    def eviction_candidates(self, target: str, victims: list[str]) -> list[Candidate]:
        """Ready roles outside ``target``'s own victims that may be unloaded for memory (and
        sleeping ones, when their RAM is the memory): never a persistent or pinned one, nor one
        whose group has a start or stop running."""
        s, current = self.s, self.current()
        found = []
        for role, status in s.status.items():
            if (
                role == target
                or role in victims
                or not (status.state is EngineState.READY or self.asleep_on_host(role))
                or role in s.topology.persistent
                or role == self.plan.pinned
                or role not in s.topology.group_of
                or self.group_busy(role)
            ):
                continue
            view = current[role]
            found.append(
                Candidate(
                    role,
                    s.need_mb(role),
                    s.reload_seconds(role),
                    busy=bool(view.inflight or view.waiting),
                    last_used=view.last_used,
                )
            )
        return found

    def redirect(self, target: str, reason: str) -> None:
        """``target`` cannot fit even with everything evictable unloaded: its fallback now."""
        s, plan = self.s, self.plan
        if target != plan.pinned and target not in self.role_of:
            return  # nobody to move: a default role that cannot fit just does not come back
        loaded = s.status[target].loaded
        free = self.free_mb()

        def fits_instead(other: str) -> bool:
            # What the target would give back if it is loaded, plus what may be evicted.
            budget = free + (s.need_mb(target) if loaded else 0)
            budget += sum(c.mb for c in self.eviction_candidates(other, []) if c.role != target)
            return fits(s.need_mb(other), budget, 0)

        fallback = pick_fallback(target, s.roles, fits_instead)
        if fallback is None:
            self.refuse(target, reason)
            return
        plan.fallbacks.append((reason, fallback))
        for i, role in enumerate(self.role_of):
            if role == target:
                self.role_of[i] = fallback
                plan.redirects[i] = (fallback, f"{reason}; served by {fallback}")
        if plan.pinned == target:
            # The switch is answered when the fallback is ready (or fails), not now: only then
            # is "loaded instead" true.
            plan.retargets.append((target, fallback, reason))
            plan.pinned = fallback
            plan.switch_started.append(fallback)

    def refuse(self, role: str, reason: str) -> None:
        for i, waiting in enumerate(self.role_of):
            if waiting == role:
                self.plan.refusals[i] = f"role {role!r} cannot be loaded: {reason}"
                self.role_of[i] = None
        if self.plan.pinned == role:
            self.plan.pinned = None
            self.plan.answers.append((role, {"status": "failed", "role": role, "error": reason}))
