"""The engine scheduler's decisions, without processes: snapshots in, plans out.

``scheduler.plan`` is pure: these tests build a ``Snapshot`` by hand (role states, queued
requests, the clock) and read the ``Plan``. The last tests run the whole ``Supervisor`` owner
loop against fake drivers (no process, no port) to show that it applies those plans.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from gateway.config import Engines, Group, Role
from gateway.engines.policy import Topology
from gateway.engines.resources import Resources
from gateway.engines.scheduler import Snapshot, Waiting, must_make_room, next_wake, plan
from gateway.engines.states import EngineState, EngineStatus
from gateway.engines.supervisor import Supervisor
from gateway.errors import EngineStartError, EngineUnavailable
from gateway.metrics import Metrics

S = EngineState
NOW = 1000.0


def roles(*names: str, **fields: Any) -> dict[str, Role]:
    return {n: Role(engine="llamacpp", model=f"/{n}.gguf", **fields) for n in names}


def status(name: str, state: EngineState = S.STOPPED, **fields: Any) -> EngineStatus:
    record = EngineStatus(name, state=state, last_used=NOW - 5)
    for key, value in fields.items():
        setattr(record, key, value)
    return record


def snapshot(
    all_roles: Mapping[str, Role],
    states: Mapping[str, EngineStatus] | None = None,
    waiters: tuple[tuple[str, float], ...] = (),
    engines: Engines | None = None,
    **fields: Any,
) -> Snapshot:
    engines = engines or Engines(max_wait_seconds=10)
    current = {n: status(n) for n in all_roles} | dict(states or {})
    return Snapshot(
        all_roles,
        Topology.build(all_roles, engines),
        engines,
        current,
        [Waiting(role, NOW - age) for role, age in waiters],
        **fields,
    )


# --- admission ----------------------------------------------------------------------------------


def test_a_request_for_a_stopped_role_starts_it_and_waits() -> None:
    decided = plan(snapshot(roles("fast"), waiters=(("fast", 0.1),)), NOW)
    assert decided.starts == ["fast"]
    assert decided.grants == [] and decided.stops == []


def test_requests_for_a_ready_role_are_granted_in_arrival_order() -> None:
    snap = snapshot(
        roles("fast"), {"fast": status("fast", S.READY)}, (("fast", 2.0), ("fast", 1.0))
    )
    decided = plan(snap, NOW)
    assert decided.grants == [0, 1]
    assert decided.starts == []
    # Pure: the owner's records are untouched until it applies the plan.
    assert snap.status["fast"].inflight == 0


def test_a_draining_role_takes_no_new_requests() -> None:
    snap = snapshot(
        roles("a", "b"),
        {"a": status("a", S.READY, inflight=1)},
        (("a", 0.1), ("b", 20.0)),
        draining=frozenset({"a"}),
    )
    decided = plan(snap, NOW)
    assert decided.grants == []
    # The swap stays decided: a keeps draining, and nothing stops while it still serves.
    assert decided.draining == {"a"}
    assert decided.stops == [] and decided.starts == []


# --- swaps --------------------------------------------------------------------------------------


def test_the_loaded_role_finishes_its_queue_before_a_young_request_swaps_it_out() -> None:
    snap = snapshot(
        roles("a", "b"), {"a": status("a", S.READY, inflight=1)}, (("a", 0.5), ("b", 1.0))
    )
    decided = plan(snap, NOW)
    assert decided.grants == [0]  # a's request is served first
    assert decided.draining == set() and decided.stops == [] and decided.starts == []


def test_a_starving_request_drains_the_loaded_role_then_swaps_once_it_is_idle() -> None:
    busy = snapshot(roles("a", "b"), {"a": status("a", S.READY, inflight=1)}, (("b", 11.0),))
    decided = plan(busy, NOW)
    assert decided.draining == {"a"}
    assert decided.stops == [] and decided.starts == []
    idle = snapshot(
        roles("a", "b"), {"a": status("a", S.READY)}, (("b", 12.0),), draining=frozenset({"a"})
    )
    decided = plan(idle, NOW)
    # Without a memory estimate the new engine starts only after the old one is gone.
    assert decided.stops == ["a"] and decided.starts == []


def test_a_target_that_fits_alongside_starts_while_its_victim_stops() -> None:
    snap = snapshot(
        roles("a", "b", memory_mb=1000),
        {"a": status("a", S.READY)},
        (("b", 1.0),),
        free_mb=lambda: 4000,
    )
    decided = plan(snap, NOW)
    assert decided.stops == ["a"] and decided.starts == ["b"]


def test_nothing_starts_while_the_group_has_an_operation_running() -> None:
    snap = snapshot(
        roles("a", "b"), {"a": status("a", S.STOPPING)}, (("b", 1.0),), busy=frozenset({"a"})
    )
    assert plan(snap, NOW).starts == []


def test_an_explicit_switch_swaps_at_once() -> None:
    snap = snapshot(roles("a", "b"), {"a": status("a", S.READY)}, (("a", 0.1),), pinned="b")
    decided = plan(snap, NOW)
    # a's queued request was admitted first (no livelock), then the switch evicts it.
    assert decided.grants == [0]
    assert decided.draining == {"a"}
    assert decided.stops == [] and decided.starts == []  # a now has one in flight


def test_a_group_full_of_persistent_roles_refuses_the_request() -> None:
    engines = Engines(groups={"gpu": Group(members=("a", "b"), persistent=("a",))})
    snap = snapshot(roles("a", "b"), {"a": status("a", S.READY)}, (("b", 1.0),), engines=engines)
    decided = plan(snap, NOW)
    assert decided.refusals == {
        0: "role 'b' cannot be loaded: its group is full of persistent roles"
    }
    assert decided.starts == []


# --- memory and fallbacks -----------------------------------------------------------------------


def test_a_role_that_does_not_fit_sends_its_requests_to_a_fallback_and_answers_the_switch() -> None:
    all_roles = {
        "big": Role(engine="llamacpp", model="/big.gguf", memory_mb=8000, fallback=("small",)),
        "small": Role(engine="llamacpp", model="/small.gguf", memory_mb=1000),
    }
    snap = snapshot(all_roles, waiters=(("big", 1.0),), pinned="big", free_mb=lambda: 2000)
    decided = plan(snap, NOW)
    reason = "role big needs 8000 MB, 2000 MB available"
    assert decided.redirects == {0: ("small", f"{reason}; served by small")}
    assert decided.answers == [
        ("big", {"status": "fallback", "role": "small", "requested": "big", "reason": reason})
    ]
    assert decided.pinned == "small" and decided.switch_started == ["small"]
    assert decided.fallbacks == [(reason, "small")]
    assert decided.refusals == {}


def test_a_role_that_fits_nowhere_is_refused_with_the_numbers() -> None:
    all_roles = roles("big", memory_mb=8000)
    snap = snapshot(all_roles, waiters=(("big", 1.0),), pinned="big", free_mb=lambda: 2000)
    decided = plan(snap, NOW)
    reason = "role big needs 8000 MB, 2000 MB available"
    assert decided.refusals == {0: f"role 'big' cannot be loaded: {reason}"}
    assert decided.answers == [("big", {"status": "failed", "role": "big", "error": reason})]
    assert decided.pinned is None


# --- unloads, idle, backoff, wake-ups -----------------------------------------------------------


def test_unloading_aborts_a_start_and_stops_an_idle_engine() -> None:
    snap = snapshot(
        roles("a", "b"),
        {"a": status("a", S.STARTING), "b": status("b", S.READY)},
        busy=frozenset({"a"}),
        unloading=frozenset({"a", "b"}),
    )
    decided = plan(snap, NOW)
    assert decided.aborts == ["a"] and decided.stops == ["b"]


def test_an_idle_role_past_its_ttl_is_stopped() -> None:
    snap = snapshot(roles("fast", ttl_seconds=3), {"fast": status("fast", S.READY)})
    decided = plan(snap, NOW)
    assert decided.stops == ["fast"] and decided.idle == [("fast", 5.0)]
    assert (
        next_wake(snapshot(roles("fast", ttl_seconds=60), {"fast": status("fast", S.READY)}), NOW)
        == NOW + 55
    )


def test_a_failed_role_waits_for_its_backoff_unless_a_switch_asks_for_it() -> None:
    failed = {"fast": status("fast", S.FAILED, retry_at=NOW + 2)}
    waiting = snapshot(roles("fast"), failed, (("fast", 0.1),))
    assert plan(waiting, NOW).starts == []
    assert next_wake(waiting, NOW) == NOW + 2
    assert plan(snapshot(roles("fast"), failed, (("fast", 0.1),), pinned="fast"), NOW).starts == [
        "fast"
    ]


def test_a_ready_role_in_an_over_full_group_must_make_room() -> None:
    engines = Engines(groups={"gpu": Group(members=("a", "b"))})
    both = {"a": status("a", S.READY), "b": status("b", S.READY)}
    assert must_make_room(snapshot(roles("a", "b"), both, engines=engines), "a", NOW)
    alone = {"a": status("a", S.READY)}
    assert not must_make_room(snapshot(roles("a", "b"), alone, engines=engines), "a", NOW)


# --- the owner loop against fake drivers --------------------------------------------------------


class FakeDriver:
    """An engine that starts when told to, and records what the supervisor asked of it."""

    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail
        self.exit = asyncio.Event()

    async def start(self) -> int | None:
        self.log.append(f"start {self.name}")
        await asyncio.sleep(0)
        if self.fail:
            raise EngineStartError("no such model")
        return None

    async def wait_exit(self) -> int:
        await self.exit.wait()
        return 1

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        self.exit.set()

    def exit_detail(self) -> str:
        return ""


def supervisor(all_roles: dict[str, Role], log: list[str], **engines: Any) -> Supervisor:
    drivers = {n: FakeDriver(log, n, fail=n.startswith("broken")) for n in all_roles}
    return Supervisor(
        all_roles,
        Engines(wait_timeout_seconds=5, max_wait_seconds=0.05, **engines),
        drivers,
        Metrics(),
        lambda: Resources(ram_free_mb=10_000, ram_total_mb=10_000),
    )


async def test_the_owner_swaps_roles_one_at_a_time_through_fake_drivers() -> None:
    log: list[str] = []
    sup = supervisor(roles("a", "b"), log)
    await sup.start()
    try:
        lease = await sup.acquire("a")
        assert sup.status("a").state is S.READY and sup.status("a").inflight == 1
        wanted = asyncio.create_task(sup.acquire("b"))
        await asyncio.sleep(0.2)
        assert not wanted.done()  # a still has a request in flight: never stopped under it
        sup.release(lease)
        other = await wanted
        assert other.role == "b"
        assert log == ["start a", "stop a", "start b"]
        assert sup.status("a").state is S.STOPPED
        sup.release(other)
    finally:
        await sup.stop()
    assert {sup.status(n).state for n in ("a", "b")} == {S.STOPPED}


async def test_a_start_failure_moves_waiters_to_the_fallback_role() -> None:
    log: list[str] = []
    all_roles = {
        "broken": Role(engine="llamacpp", model="/x.gguf", fallback=("ok",)),
        "ok": Role(engine="llamacpp", model="/ok.gguf"),
    }
    sup = supervisor(all_roles, log)
    await sup.start()
    try:
        lease = await sup.acquire("broken")
        assert lease.role == "ok" and lease.requested == "broken"
        assert lease.note == "role broken failed to start; served by ok"
        assert sup.status("broken").state is S.FAILED
        sup.release(lease)
    finally:
        await sup.stop()


async def test_a_role_that_cannot_load_is_refused_not_left_waiting() -> None:
    sup = supervisor(roles("big", memory_mb=50_000), [])
    await sup.start()
    try:
        with pytest.raises(EngineUnavailable, match="role 'big' cannot be loaded: role big needs"):
            await sup.acquire("big")
    finally:
        await sup.stop()
