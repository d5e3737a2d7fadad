"""The engine policy as pure functions: eviction, fit, fallback, grouping, what to load next."""

from __future__ import annotations

from gateway.config import Engines, Group, Role
from gateway.engines.builtin import builtin_kinds
from gateway.engines.policy import (
    RoleView,
    Topology,
    backoff,
    evictions,
    fits,
    may_evict_now,
    next_to_load,
    pick_fallback,
)
from gateway.engines.resources import parse_nvidia_smi


def roles(*names: str, **fallbacks: tuple[str, ...]) -> dict[str, Role]:
    return {
        n: Role(engine="llamacpp", model=f"/m/{n}.gguf", fallback=fallbacks.get(n, ()))
        for n in names
    }


def test_roles_outside_groups_share_one_slot_and_external_ones_none() -> None:
    all_roles = roles("fast", "coder") | {
        "remote": Role(engine="external", model="x", base_url="http://h/v1")
    }
    topology = Topology.build(all_roles, Engines(), builtin_kinds().unmanaged(all_roles))
    assert topology.group_of["fast"] == topology.group_of["coder"]
    assert "remote" not in topology.group_of
    assert topology.max_loaded[topology.group_of["fast"]] == 1


def test_loading_a_role_evicts_the_least_valuable_peer_and_never_a_persistent_one() -> None:
    engines = Engines(
        groups={
            "gpu": Group(
                members=("embed", "fast", "coder", "big"), max_loaded=2, persistent=("embed",)
            )
        }
    )
    topology = Topology.build(roles("embed", "fast", "coder", "big"), engines)
    views = {
        "embed": RoleView(loaded=True, ready=True, last_used=1.0),
        "fast": RoleView(loaded=True, ready=True, last_used=5.0),
        "coder": RoleView(),
        "big": RoleView(),
    }
    assert evictions("coder", views, topology) == ["fast"]
    views["fast"] = RoleView(loaded=False)
    assert evictions("coder", views, topology) == []
    full = Engines(
        groups={"gpu": Group(members=("embed", "fast"), max_loaded=1, persistent=("embed",))}
    )
    assert (
        evictions(
            "fast",
            {"embed": RoleView(loaded=True), "fast": RoleView()},
            Topology.build(roles("embed", "fast"), full),
        )
        is None
    )


def test_idle_peers_are_evicted_before_busy_ones() -> None:
    engines = Engines(groups={"gpu": Group(members=("a", "b", "c"), max_loaded=2)})
    topology = Topology.build(roles("a", "b", "c"), engines)
    views = {
        "a": RoleView(loaded=True, inflight=2, last_used=1.0),
        "b": RoleView(loaded=True, last_used=9.0),
        "c": RoleView(),
    }
    assert evictions("c", views, topology) == ["b"]


def test_fit_and_fallback_by_memory() -> None:
    assert fits(0, 10, 0) and fits(100, 60, 40) and not fits(101, 60, 40)
    table = roles("quality", "balanced", "fast", quality=("balanced", "fast"), balanced=("fast",))
    sizes = {"quality": 20000, "balanced": 9000, "fast": 2000}
    assert pick_fallback("quality", table, lambda r: sizes[r] <= 10000) == "balanced"
    assert pick_fallback("quality", table, lambda r: sizes[r] <= 3000) == "fast"
    assert pick_fallback("quality", table, lambda r: False) is None
    cyclic = roles("a", "b", a=("b",), b=("a",))
    assert pick_fallback("a", cyclic, lambda r: r == "a") is None


def test_grouping_serves_the_loaded_role_first_unless_someone_starves() -> None:
    views = {
        "a": RoleView(loaded=True, ready=True, inflight=1, waiting=2),
        "b": RoleView(waiting=1, oldest_wait=1.0),
    }
    assert not may_evict_now("b", ["a"], views, max_wait=30, urgent=False)
    assert may_evict_now("b", ["a"], views, max_wait=30, urgent=True)
    starving = {**views, "b": RoleView(waiting=1, oldest_wait=31.0)}
    assert may_evict_now("b", ["a"], starving, max_wait=30, urgent=False)
    idle = {"a": RoleView(loaded=True, ready=True), "b": RoleView(waiting=1)}
    assert may_evict_now("b", ["a"], idle, max_wait=30, urgent=False)


def test_next_to_load_puts_the_explicit_switch_first_then_the_oldest_waiter() -> None:
    views = {
        "a": RoleView(waiting=1, oldest_wait=5.0),
        "b": RoleView(waiting=3, oldest_wait=9.0),
        "c": RoleView(),
        "d": RoleView(ready=True, waiting=4),
    }
    assert next_to_load(views, pinned=None, blocked=lambda r: False) == ["b", "a"]
    assert next_to_load(views, pinned="c", blocked=lambda r: False) == ["c", "b", "a"]
    assert next_to_load(views, pinned=None, blocked=lambda r: r == "b") == ["a"]


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, 1.0, 10.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 10.0]


def test_nvidia_smi_parsing() -> None:
    assert parse_nvidia_smi("20000, 24576\n1000, 8192\n") == (21000, 32768)
    assert parse_nvidia_smi("") is None
    assert parse_nvidia_smi("No devices were found") is None


# --- turns: residency, priorities, the starvation bound, strict FIFO ----------------------------


def test_min_residency_holds_an_idle_role_just_loaded_until_a_request_starves() -> None:
    fresh = {
        "a": RoleView(loaded=True, ready=True, resident_seconds=2.0),
        "b": RoleView(waiting=1, oldest_wait=5.0),
    }
    assert not may_evict_now("b", ["a"], fresh, max_wait=30, urgent=False, min_residency=10)
    assert may_evict_now("b", ["a"], fresh, max_wait=30, urgent=False, min_residency=1)
    # The hard bound and an explicit switch beat residency.
    assert may_evict_now("b", ["a"], fresh, max_wait=5, urgent=False, min_residency=10)
    assert may_evict_now("b", ["a"], fresh, max_wait=30, urgent=True, min_residency=10)


def test_a_higher_priority_role_does_not_queue_behind_a_lower_ones_requests() -> None:
    views = {
        "a": RoleView(loaded=True, ready=True, inflight=1, waiting=3, priority=0),
        "b": RoleView(waiting=1, oldest_wait=1.0, priority=5),
        "c": RoleView(waiting=1, oldest_wait=1.0, priority=0),
    }
    assert may_evict_now("b", ["a"], views, max_wait=30, urgent=False)
    assert not may_evict_now("c", ["a"], views, max_wait=30, urgent=False)
    # ... but only once the loaded role's residency is over.
    held = {**views, "a": RoleView(loaded=True, ready=True, inflight=1, resident_seconds=1.0)}
    assert not may_evict_now("b", ["a"], held, max_wait=30, urgent=False, min_residency=10)


def test_strict_fifo_swaps_for_the_next_request_whatever_the_loaded_role_has_queued() -> None:
    views = {
        "a": RoleView(loaded=True, ready=True, inflight=1, waiting=3, resident_seconds=0.5),
        "b": RoleView(waiting=1, oldest_wait=0.1),
    }
    assert not may_evict_now("b", ["a"], views, max_wait=30, urgent=False, min_residency=10)
    assert may_evict_now(
        "b", ["a"], views, max_wait=30, urgent=False, min_residency=10, grouping=False
    )


def never(role: str) -> bool:
    return False


def test_next_to_load_orders_by_priority_but_a_starving_role_goes_first() -> None:
    views = {
        "low": RoleView(waiting=1, oldest_wait=8.0, priority=0),
        "high": RoleView(waiting=1, oldest_wait=1.0, priority=9),
        "mid": RoleView(waiting=2, oldest_wait=2.0, priority=3),
    }
    assert next_to_load(views, None, never, max_wait=10) == ["high", "mid", "low"]
    assert next_to_load(views, None, never, max_wait=5) == ["low", "high", "mid"]
    # Strict FIFO ignores priorities: the oldest request first.
    assert next_to_load(views, None, never, max_wait=10, by_priority=False) == [
        "low",
        "mid",
        "high",
    ]
