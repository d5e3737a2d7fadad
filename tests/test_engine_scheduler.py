"""The engine scheduler's decisions, without processes: snapshots in, plans out.

``scheduler.plan`` is pure: these tests build a ``Snapshot`` by hand (role states, queued
requests, the clock) and read the ``Plan``. The last tests run the whole ``Supervisor`` owner
loop against fake drivers (no process, no port) to show that it applies those plans.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import pytest

from gateway.config import Engines, Group, Role
from gateway.engines.policy import Topology
from gateway.engines.resources import Resources
from gateway.engines.scheduler import (
    Snapshot,
    Waiting,
    must_make_room,
    next_wake,
    plan,
    victims,
)
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


def test_a_starving_peer_does_not_drain_a_role_before_it_served_what_it_loads_for() -> None:
    # Starts overlapping stops made this a livelock: b, starting for its queue, was marked
    # draining by a's starving request, so it was stopped unused the moment it was ready.
    snap = snapshot(
        roles("a", "b", memory_mb=100),
        {"b": status("b", S.STARTING)},
        (("b", 1.0), ("a", 20.0)),
        busy=frozenset({"b"}),
        free_mb=lambda: 4000,
    )
    decided = plan(snap, NOW)
    assert decided.draining == set() and decided.stops == [] and decided.starts == []
    ready = snapshot(
        roles("a", "b", memory_mb=100),
        {"b": status("b", S.READY)},
        (("b", 1.0), ("a", 20.0)),
        free_mb=lambda: 4000,
    )
    decided = plan(ready, NOW)
    assert decided.grants == [0] and decided.draining == {"b"} and decided.stops == []


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


def huge_and_fast(**fast: Any) -> dict[str, Role]:
    return {
        "big": Role(engine="llamacpp", model="/big.gguf", memory_mb=8000, fallback=("small",)),
        "small": Role(engine="llamacpp", model="/small.gguf", memory_mb=1000, **fast),
    }


BIG_REASON = "role big needs 8000 MB, 2000 MB available"


def test_a_switch_to_a_role_that_does_not_fit_starts_its_fallback_in_the_same_pass() -> None:
    # From idle, with nothing queued: no later message would ever wake the owner to start
    # the fallback, so this pass must (issue 14: /engine/health stayed "switching").
    snap = snapshot(huge_and_fast(), pinned="big", free_mb=lambda: 2000)
    decided = plan(snap, NOW)
    assert decided.starts == ["small"]
    # The switch is answered when small is ready, not now: only then is "loaded instead" true.
    assert decided.retargets == [("big", "small", BIG_REASON)] and decided.answers == []
    assert decided.pinned == "small" and decided.switch_started == ["small"]
    assert decided.fallbacks == [(BIG_REASON, "small")]


def test_a_request_for_a_role_that_cannot_fit_falls_back_at_once_not_after_max_wait() -> None:
    snap = snapshot(huge_and_fast(), waiters=(("big", 0.0),), free_mb=lambda: 2000)
    decided = plan(snap, NOW)
    assert decided.redirects == {0: ("small", f"{BIG_REASON}; served by small")}
    assert decided.starts == ["small"] and decided.refusals == {}
    # Nothing left to wait for: the owner is not told to look again at max_wait.
    assert decided.grants == []


def test_a_fallback_already_loaded_serves_at_once_and_answers_the_switch() -> None:
    snap = snapshot(
        huge_and_fast(),
        {"small": status("small", S.READY)},
        (("big", 0.0),),
        pinned="big",
        free_mb=lambda: 1000,
    )
    decided = plan(snap, NOW)
    reason = "role big needs 8000 MB, 2000 MB available"
    assert decided.grants == [0] and decided.starts == [] and decided.stops == []
    assert decided.retargets == [("big", "small", reason)]
    assert decided.answers == [("small", {"status": "ready", "role": "small"})]
    assert decided.pinned is None


def test_a_role_that_fits_nowhere_is_refused_with_the_numbers() -> None:
    all_roles = roles("big", memory_mb=8000)
    snap = snapshot(all_roles, waiters=(("big", 1.0),), pinned="big", free_mb=lambda: 2000)
    decided = plan(snap, NOW)
    reason = "role big needs 8000 MB, 2000 MB available"
    assert decided.refusals == {0: f"role 'big' cannot be loaded: {reason}"}
    assert decided.answers == [("big", {"status": "failed", "role": "big", "error": reason})]
    assert decided.pinned is None


# --- preloaded and persistent roles -------------------------------------------------------------


def two_groups() -> Engines:
    return Engines(
        groups={
            "gpu": Group(members=("a", "b"), max_loaded=2, persistent=("a",)),
            "cpu": Group(members=("embed",), persistent=("embed",)),
        }
    )


def test_wanted_roles_start_once_each_when_their_group_has_room() -> None:
    engines = two_groups()
    snap = snapshot(roles("a", "b", "embed"), engines=engines, wanted=frozenset({"a", "embed"}))
    assert plan(snap, NOW).starts == ["a", "embed"]
    # One start per group at a time: the second member waits for the first to finish.
    busy = snapshot(
        roles("a", "b", "embed"),
        {"b": status("b", S.STARTING)},
        engines=engines,
        busy=frozenset({"b"}),
        wanted=frozenset({"a"}),
    )
    assert plan(busy, NOW).starts == []


def test_a_wanted_role_never_evicts_and_waits_behind_requests() -> None:
    full = snapshot(roles("a", "b"), {"b": status("b", S.READY)}, wanted=frozenset({"a"}))
    assert plan(full, NOW).starts == [] and plan(full, NOW).stops == []
    queued = snapshot(roles("a", "b"), waiters=(("b", 0.1),), wanted=frozenset({"a"}))
    assert plan(queued, NOW).starts == ["b"]
    unloading = snapshot(roles("a"), wanted=frozenset({"a"}), unloading=frozenset({"a"}))
    assert plan(unloading, NOW).starts == []


def test_a_switch_unloads_only_the_peers_that_do_not_fit_beside_it() -> None:
    engines = Engines(groups={"gpu": Group(members=("a", "b", "c"), max_loaded=2)})
    one = snapshot(roles("a", "b", "c"), {"a": status("a", S.READY)}, engines=engines)
    assert victims(one, "b", NOW) == []
    both = {"a": status("a", S.READY, last_used=NOW - 9), "b": status("b", S.READY)}
    assert victims(snapshot(roles("a", "b", "c"), both, engines=engines), "c", NOW) == ["a"]


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


# --- scheduling for agents: residency, priorities, the starvation bound, FIFO, idle return ------

LOAD, STOP, SERVICE = 2.0, 0.5, 1.0
# The longest a request may wait once its role's turn came: the loaded role's requests in
# flight finish (one SERVICE), it stops, the new one loads.
ONE_SWAP = SERVICE + STOP + LOAD


@dataclass
class Outcome:
    swaps: int
    waits: dict[str, list[float]]

    @property
    def longest(self) -> float:
        return max(w for waits in self.waits.values() for w in waits)


def simulate(
    all_roles: Mapping[str, Role], engines: Engines, arrivals: list[tuple[float, str]]
) -> Outcome:
    """Apply the scheduler's plans on a simulated clock, as the owner loop would: engines load
    in LOAD s and stop in STOP s, each request takes SERVICE s (any number at once, like
    llama-server's parallel slots), and the owner wakes at each event or ``next_wake``."""
    topology = Topology.build(all_roles, engines)
    status = {n: EngineStatus(n, last_used=0.0) for n in all_roles}
    queue = sorted(arrivals)
    waiters: list[tuple[str, float]] = []
    running: list[tuple[float, str]] = []
    ops: dict[str, tuple[float, EngineState]] = {}
    draining: set[str] = set()
    outcome = Outcome(0, {n: [] for n in all_roles})
    now = 0.0

    def snap() -> Snapshot:
        queued = [Waiting(role, arrived) for role, arrived in waiters]
        return Snapshot(
            all_roles, topology, engines, status, queued, frozenset(ops), frozenset(draining)
        )

    for _ in range(10_000):
        while queue and queue[0][0] <= now:
            arrived, role = queue.pop(0)
            waiters.append((role, arrived))
        for done, role in [r for r in running if r[0] <= now]:
            running.remove((done, role))
            status[role].inflight -= 1
            status[role].last_used = done
        for role, (done, state) in [(r, op) for r, op in ops.items() if op[0] <= now]:
            del ops[role]
            status[role].state = state
            if state is S.READY:
                status[role].ready_at = status[role].last_used = done
        decided = plan(snap(), now)
        assert not decided.refusals and not decided.redirects
        for i in decided.grants:
            role, arrived = waiters[i]
            status[role].inflight += 1
            status[role].last_used = now
            outcome.waits[role].append(now - arrived)
            running.append((now + SERVICE, role))
        waiters = [w for i, w in enumerate(waiters) if i not in decided.grants]
        draining = decided.draining
        for role in decided.stops:
            status[role].state = S.STOPPING
            ops[role] = (now + STOP, S.STOPPED)
        for role in decided.starts:
            status[role].state = S.STARTING
            ops[role] = (now + LOAD, S.READY)
            outcome.swaps += 1
        events = [t for t, _ in queue[:1]] + [t for t, _ in running]
        events += [t for t, _ in ops.values()]
        wake = next_wake(snap(), now)
        if wake is not None and wake > now:
            events.append(wake)
        if not events:
            assert not waiters, f"left waiting: {waiters}"
            return outcome
        now = min(events)
    raise AssertionError("the simulation never settled")


def test_alternating_roles_swap_far_less_with_grouping_than_with_strict_fifo() -> None:
    # Two roles alternating, a request every half second: A B A B ...
    work = [(i * 0.5, "a" if i % 2 == 0 else "b") for i in range(40)]
    grouped = simulate(roles("a", "b"), Engines(max_wait_seconds=10), work)
    fifo = simulate(roles("a", "b"), Engines(max_wait_seconds=10, grouping=False), work)
    assert fifo.swaps >= 30  # a swap for nearly every request
    assert grouped.swaps * 4 <= fifo.swaps
    # Grouping still bounds every wait: its turn within max_wait, then one swap.
    assert grouped.longest <= 10 + ONE_SWAP


def test_a_starving_request_is_served_within_the_bound_despite_a_higher_priority_stream() -> None:
    all_roles = roles("lo") | roles("hi", priority=5)
    # hi never goes idle (a request every 0.25 s, each taking 1 s); lo asks once.
    work = [(i * 0.25, "hi") for i in range(160)] + [(1.0, "lo")]
    outcome = simulate(all_roles, Engines(max_wait_seconds=10), work)
    assert len(outcome.waits["lo"]) == 1
    assert outcome.waits["lo"][0] <= 10 + ONE_SWAP
    # Every request of the stream is served too, each within the same bound.
    assert len(outcome.waits["hi"]) == 160 and outcome.longest <= 10 + ONE_SWAP


def test_min_residency_keeps_an_orchestrator_loaded_between_its_calls() -> None:
    # The orchestrator (a) calls every 1.2 s (a 1 s answer, 0.2 s to think); its sub-agents (b)
    # start a task every 1.2 s in between. Without residency, each pause of a's hands the
    # engine to b, and a's next call swaps it back.
    work = [(i * 1.2, "a") for i in range(15)] + [(0.6 + i * 1.2, "b") for i in range(15)]
    thrashing = simulate(roles("a", "b"), Engines(max_wait_seconds=20), work)
    resident = simulate(
        roles("a", "b"), Engines(max_wait_seconds=20, min_residency_seconds=8), work
    )
    assert resident.swaps * 2 <= thrashing.swaps
    assert resident.longest <= 20 + ONE_SWAP


def test_min_residency_holds_until_it_ends_or_a_request_starves() -> None:
    engines = Engines(max_wait_seconds=10, min_residency_seconds=5)
    fresh = {"a": status("a", S.READY, ready_at=NOW - 1)}
    held = snapshot(roles("a", "b"), fresh, (("b", 2.0),), engines)
    decided = plan(held, NOW)
    assert decided.stops == [] and decided.draining == set()
    # The owner looks again when the residency ends (before b's max_wait, at NOW + 8).
    assert next_wake(held, NOW) == NOW + 4
    old = {"a": status("a", S.READY, ready_at=NOW - 6)}
    assert plan(snapshot(roles("a", "b"), old, (("b", 2.0),), engines), NOW).stops == ["a"]
    starving = snapshot(roles("a", "b"), fresh, (("b", 10.0),), engines)
    assert plan(starving, NOW).stops == ["a"]
    switched = snapshot(roles("a", "b"), fresh, engines=engines, pinned="b")
    assert plan(switched, NOW).stops == ["a"]


def test_the_role_of_higher_priority_loads_first_until_an_older_request_starves() -> None:
    all_roles = roles("b") | roles("c", priority=5)
    younger = snapshot(all_roles, waiters=(("b", 3.0), ("c", 1.0)))
    assert plan(younger, NOW).starts == ["c"]
    starving = snapshot(all_roles, waiters=(("b", 10.0), ("c", 1.0)))
    assert plan(starving, NOW).starts == ["b"]


def test_an_agents_priority_lifts_its_request_over_an_older_one_of_another_agent() -> None:
    # Same role priority; the orchestrator's agent has engines.agent_priority 5.
    b_then_c = [Waiting("b", NOW - 3.0), Waiting("c", NOW - 1.0, priority=5)]
    decided = plan(replace(snapshot(roles("b", "c")), waiters=b_then_c), NOW)
    assert decided.starts == ["c"]
    # It adds to the role's own priority, and a lower agent can sink a role below another.
    lowered = [Waiting("b", NOW - 1.0, priority=-5), Waiting("c", NOW - 0.5)]
    decided = plan(replace(snapshot(roles("b", priority=3) | roles("c")), waiters=lowered), NOW)
    assert decided.starts == ["c"]
    # The starvation bound still beats it.
    starving = [Waiting("b", NOW - 10.0), Waiting("c", NOW - 1.0, priority=5)]
    assert plan(replace(snapshot(roles("b", "c")), waiters=starving), NOW).starts == ["b"]


def test_an_agents_priority_lets_its_role_evict_a_busy_lower_one() -> None:
    busy = {"a": status("a", S.READY, inflight=1)}
    plain = snapshot(roles("a", "b"), busy, (("a", 0.5), ("b", 1.0)))
    assert plan(plain, NOW).stops == [] and plan(plain, NOW).draining == set()
    urgent = replace(plain, waiters=[Waiting("a", NOW - 0.5), Waiting("b", NOW - 1.0, 5)])
    # a drains (its request in flight finishes) and b goes next.
    assert plan(urgent, NOW).draining == {"a"}


def test_strict_fifo_admits_no_request_past_an_older_one_of_its_group() -> None:
    ready = {"a": status("a", S.READY)}
    waiting = (("b", 2.0), ("a", 1.0))
    fifo = plan(snapshot(roles("a", "b"), ready, waiting, Engines(grouping=False)), NOW)
    # a's request waits behind b's, and a is unloaded for b at once.
    assert fifo.grants == [] and fifo.stops == ["a"]
    grouped = plan(snapshot(roles("a", "b"), ready, waiting), NOW)
    assert grouped.grants == [1] and grouped.stops == []


def returning(after: float = 300, **fields: Any) -> Engines:
    return Engines(default_role="fast", return_after_idle_seconds=after, **fields)


def idle_since(ago: float, **states: EngineState) -> dict[str, EngineStatus]:
    return {
        name: status(name, states.get(name, S.STOPPED), last_used=NOW - ago)
        for name in ("fast", "coder")
    }


def test_the_default_role_comes_back_after_idle_unloading_the_idle_role_in_its_way() -> None:
    engines = returning()
    idle = snapshot(roles("fast", "coder"), idle_since(400, coder=S.READY), engines=engines)
    decided = plan(idle, NOW)
    assert decided.stops == ["coder"] and decided.returns == [("fast", 400.0)]
    gone = snapshot(roles("fast", "coder"), idle_since(401), engines=engines)
    decided = plan(gone, NOW)
    assert decided.starts == ["fast"] and decided.returns == [("fast", 401.0)]
    # Not before its time, and the owner is told when to look.
    recent = snapshot(roles("fast", "coder"), idle_since(100, coder=S.READY), engines=engines)
    assert plan(recent, NOW).stops == [] and next_wake(recent, NOW) == NOW + 200


def test_the_default_role_does_not_come_back_while_anything_is_asked() -> None:
    engines = returning()
    busy = idle_since(400, coder=S.READY)
    busy["coder"].inflight = 1
    assert plan(snapshot(roles("fast", "coder"), busy, engines=engines), NOW).stops == []
    queued = snapshot(roles("fast", "coder"), idle_since(400), (("coder", 0.1),), engines=engines)
    assert plan(queued, NOW).starts == ["coder"]
    switched = snapshot(roles("fast", "coder"), idle_since(400), engines=engines, pinned="coder")
    assert plan(switched, NOW).starts == ["coder"]
    here = snapshot(roles("fast", "coder"), idle_since(400, fast=S.READY), engines=engines)
    assert plan(here, NOW).starts == [] and plan(here, NOW).returns == []
    assert next_wake(here, NOW) is None


def test_the_default_roles_own_ttl_does_not_unload_it_when_it_would_come_back() -> None:
    all_roles = roles("fast", "coder", ttl_seconds=60)
    snap = snapshot(all_roles, idle_since(400, fast=S.READY), engines=returning())
    assert plan(snap, NOW).stops == []
    plain = snapshot(all_roles, idle_since(400, fast=S.READY))
    assert plan(plain, NOW).stops == ["fast"]


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


async def test_the_owner_starts_a_switchs_fallback_at_once_and_answers_once_it_is_ready() -> None:
    log: list[str] = []
    all_roles = {
        "big": Role(engine="llamacpp", model="/big.gguf", memory_mb=50_000, fallback=("ok",)),
        "ok": Role(engine="llamacpp", model="/ok.gguf", memory_mb=100),
    }
    sup = supervisor(all_roles, log)
    await sup.start()
    try:
        accepted = await sup.switch("big", wait=False)
        assert accepted["status"] == "switching" and accepted["role"] == "ok"
        assert accepted["requested"] == "big" and "needs 50000 MB" in accepted["reason"]
        verdict = await asyncio.wait_for(sup.switch("big", wait=True), 5)
        assert verdict["status"] == "fallback" and verdict["role"] == "ok"
        assert sup.status("ok").state is S.READY and sup.pinned is None
        assert log == ["start ok"]
    finally:
        await sup.stop()


async def test_persistent_and_preloaded_roles_are_loaded_when_the_owner_starts() -> None:
    log: list[str] = []
    groups = {"gpu": Group(members=("a", "b"), max_loaded=2, persistent=("a",))}
    sup = supervisor(roles("a", "b", "c"), log, groups=groups, preload=("c",))
    await sup.start()
    try:
        for _ in range(100):
            if sup.status("a").state is S.READY and sup.status("c").state is S.READY:
                break
            await asyncio.sleep(0.01)
        assert sup.status("a").state is S.READY and sup.status("c").state is S.READY
        assert sup.status("b").state is S.STOPPED
    finally:
        await sup.stop()


async def test_the_role_just_switched_to_comes_first_among_those_loaded_together() -> None:
    groups = {"gpu": Group(members=("a", "b"), max_loaded=2)}
    sup = supervisor(roles("a", "b"), [], groups=groups)
    await sup.start()
    try:
        assert (await sup.switch("a", wait=True))["status"] == "ready"
        assert sup.victims("b") == []
        assert (await sup.switch("b", wait=True))["status"] == "ready"
        assert sup.loaded() == ["b", "a"]
        assert (await sup.switch("a", wait=True))["already"] is True
        assert sup.loaded() == ["a", "b"]
    finally:
        await sup.stop()


async def test_the_owner_goes_back_to_the_default_role_once_nothing_is_asked() -> None:
    log: list[str] = []
    sup = supervisor(roles("a", "b"), log, default_role="a", return_after_idle_seconds=0.2)
    await sup.start()
    try:
        lease = await sup.acquire("b")
        assert lease.role == "b"
        sup.release(lease)
        for _ in range(500):
            if sup.status("a").state is S.READY:
                break
            await asyncio.sleep(0.01)
        assert sup.status("a").state is S.READY and sup.status("b").state is S.STOPPED
        assert log[-3:] == ["start b", "stop b", "start a"]
    finally:
        await sup.stop()
