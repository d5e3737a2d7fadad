"""Engine policy as pure functions: what may be loaded together, what to evict, what fits, what next.

The supervisor gathers a snapshot (``RoleView`` per role, free memory, the clock) and asks these
functions what to do; they never touch processes, sockets or the clock themselves. Whose turn
it is (``next_to_load``, ``may_evict_now``) weighs grouping by role, a minimum residency,
priorities and the hard starvation bound, or plain arrival order (strict FIFO).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.config.engines import Engines, Role

DEFAULT_GROUP = "default"


@dataclass(frozen=True, slots=True)
class RoleView:
    loaded: bool = False
    ready: bool = False
    busy: bool = False  # starting or stopping
    inflight: int = 0
    waiting: int = 0
    # Seconds the oldest queued request for this role has waited (0 when none).
    oldest_wait: float = 0.0
    last_used: float = 0.0
    memory_mb: int = 0
    # ``roles.X.priority``: higher goes first.
    priority: int = 0
    # Seconds since it became ready (inf when it is not ready: no residency to protect).
    resident_seconds: float = math.inf


@dataclass(frozen=True, slots=True)
class Topology:
    """Which roles share a resource. Built once from the config."""

    group_of: Mapping[str, str]
    members: Mapping[str, tuple[str, ...]]
    max_loaded: Mapping[str, int]
    persistent: frozenset[str]

    @classmethod
    def build(
        cls, roles: Mapping[str, Role], engines: Engines, unmanaged: frozenset[str] = frozenset()
    ) -> Topology:
        """``unmanaged``: roles turnout neither loads nor evicts (the engine kinds say which:
        ``EngineKinds.unmanaged``); policy stays below the kinds' registry."""
        group_of: dict[str, str] = {}
        members: dict[str, tuple[str, ...]] = {}
        max_loaded: dict[str, int] = {}
        persistent: set[str] = set()
        for name, group in engines.groups.items():
            members[name] = group.members
            max_loaded[name] = group.max_loaded
            persistent.update(group.persistent)
            for role in group.members:
                group_of[role] = name
        # Everything turnout loads itself and that no group claims shares one slot, like the
        # single-GPU engine of the design seed. External servers are not ours to evict.
        rest = tuple(r for r in roles if r not in group_of and r not in unmanaged)
        if rest:
            name = DEFAULT_GROUP if DEFAULT_GROUP not in members else DEFAULT_GROUP + "_"
            members[name] = rest
            max_loaded[name] = 1
            for role_name in rest:
                group_of[role_name] = name
        return cls(group_of, members, max_loaded, frozenset(persistent))

    def peers(self, role: str) -> tuple[str, ...]:
        group = self.group_of.get(role)
        return tuple(r for r in self.members.get(group, ()) if r != role) if group else ()


def evictions(target: str, views: Mapping[str, RoleView], topology: Topology) -> list[str] | None:
    """Roles to unload so ``target`` can load; None when the group is full of persistent roles.

    Least valuable first: roles with nothing queued before busy ones, then least recently used.
    """
    group = topology.group_of.get(target)
    if group is None:
        return []
    loaded = [r for r in topology.peers(target) if views[r].loaded]
    excess = len(loaded) + 1 - topology.max_loaded[group]
    if excess <= 0:
        return []
    candidates = [r for r in loaded if r not in topology.persistent]
    if len(candidates) < excess:
        return None
    candidates.sort(key=lambda r: (views[r].waiting > 0, views[r].inflight > 0, views[r].last_used))
    return candidates[:excess]


def fits(need_mb: int, free_mb: int, freed_mb: int) -> bool:
    """Unknown needs (0) always fit: the engine itself will say if it does not."""
    return need_mb <= 0 or need_mb <= free_mb + freed_mb


def pick_fallback(
    role: str, roles: Mapping[str, Role], acceptable: Callable[[str], bool]
) -> str | None:
    """The first role in ``role``'s fallback list (depth first, no cycles) that is acceptable."""
    seen = {role}
    stack = list(reversed(roles[role].fallback))
    while stack:
        candidate = stack.pop()
        if candidate in seen or candidate not in roles:
            continue
        seen.add(candidate)
        if acceptable(candidate):
            return candidate
        stack.extend(reversed(roles[candidate].fallback))
    return None


def may_evict_now(
    target: str,
    victims: list[str],
    views: Mapping[str, RoleView],
    max_wait: float,
    urgent: bool,
    min_residency: float = 0.0,
    grouping: bool = True,
) -> bool:
    """May ``target`` take its victims' place now? (Their requests in flight still finish.)

    Serve the loaded roles' queued work first: this is what turns A B A A C into A A A B C, B
    waiting while A still has requests queued or running. In order of precedence:
    - an explicit switch (``urgent``) goes at once, and so does strict FIFO (``grouping``
      off: the oldest request's role is next, whatever is loaded);
    - a request that waited ``max_wait`` goes at once: the hard starvation bound, above
      residency and priorities;
    - a victim ready for less than ``min_residency`` stays, even idle: an orchestrator's next
      call comes moments after its sub-agents' answers, and swapping back for it each time is
      the thrash this prevents;
    - idle victims go, and so do those of lower priority than the target, without waiting for
      their queue.
    """
    if urgent or not grouping or not victims or views[target].oldest_wait >= max_wait:
        return True
    if any(views[v].resident_seconds < min_residency for v in victims):
        return False
    if all(views[v].inflight == 0 and views[v].waiting == 0 for v in victims):
        return True
    return views[target].priority > max(views[v].priority for v in victims)


def next_to_load(
    views: Mapping[str, RoleView],
    pinned: str | None,
    blocked: Callable[[str], bool],
    max_wait: float = math.inf,
    by_priority: bool = True,
) -> list[str]:
    """Roles to bring up, most urgent first: the explicit switch; then the roles whose oldest
    request waited ``max_wait`` (oldest first: the starvation bound beats priorities); then by
    priority (unless ``by_priority`` is off: strict FIFO) and oldest queued request."""

    def urgency(role: str) -> tuple[bool, int, float]:
        view = views[role]
        starving = view.oldest_wait >= max_wait
        rank = view.priority if by_priority and not starving else 0
        return (not starving, -rank, -view.oldest_wait)

    order: list[str] = []
    if pinned is not None and not views[pinned].ready and not blocked(pinned):
        order.append(pinned)
    waiting = sorted(
        (
            r
            for r, v in views.items()
            if v.waiting and not v.ready and r != pinned and not blocked(r)
        ),
        key=urgency,
    )
    return order + waiting


def backoff(failures: int, base: float, cap: float) -> float:
    return float(min(cap, base * 2.0 ** max(0, failures - 1)))
