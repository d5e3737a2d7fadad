"""What happens when nobody asks: idle roles unloaded after their TTL, and the default role
loaded again after a while without requests (``engines.default_role``, llama-swap #591).

Pure functions over the scheduler's ``Snapshot``, like the scheduler itself: they read the
clock they are given and decide; the scheduler turns their answers into a plan.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.engines.policy import RoleView
from gateway.engines.snapshot import Snapshot
from gateway.engines.states import EngineState


def idle_unloads(
    snapshot: Snapshot, views: Mapping[str, RoleView], now: float
) -> list[tuple[str, float]]:
    """(role, idle seconds) for each ready role past its ``ttl_seconds`` with nothing to do."""
    s, found = snapshot, list[tuple[str, float]]()
    for name, role in s.roles.items():
        view = views[name]
        if (
            role.ttl_seconds > 0
            and view.ready
            and view.inflight == 0
            and view.waiting == 0
            and name not in s.topology.persistent
            and name not in s.busy
            and now - view.last_used >= role.ttl_seconds
            # The default role comes back after idle: its TTL would only make it flap.
            and not (name == s.config.default_role and s.config.return_after_idle_seconds > 0)
        ):
            found.append((name, now - view.last_used))
    return found


def return_due(snapshot: Snapshot) -> float | None:
    """When ``engines.default_role`` is to be loaded again: once nothing was asked of any role
    for ``return_after_idle_seconds``. None: not configured, or not now (it is loaded, failed
    or being unloaded; something is queued, running or switched to)."""
    role, after = snapshot.config.default_role, snapshot.config.return_after_idle_seconds
    status = snapshot.status.get(role)
    if (
        after <= 0
        or status is None
        or role not in snapshot.topology.group_of
        or status.loaded
        or status.state is EngineState.FAILED
        or role in snapshot.unloading
        or snapshot.waiters
        or snapshot.pinned is not None
        or any(s.inflight for s in snapshot.status.values())
    ):
        return None
    return last_activity(snapshot) + after


def last_activity(snapshot: Snapshot) -> float:
    """When any role last took or finished a request (or became ready)."""
    return max((s.last_used for s in snapshot.status.values()), default=0.0)


def wake_times(snapshot: Snapshot) -> list[float]:
    """When an idle unload or the return to the default role falls due."""
    times = [
        snapshot.status[name].last_used + role.ttl_seconds
        for name, role in snapshot.roles.items()
        if role.ttl_seconds > 0
        and snapshot.status[name].state is EngineState.READY
        and snapshot.status[name].inflight == 0
    ]
    due = return_due(snapshot)
    return times if due is None else [*times, due]
