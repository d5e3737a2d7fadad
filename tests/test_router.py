"""Routing policy as pure functions: order, balancing, cooldown, local_only, fallback decisions."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

from gateway.config import Model, Provider, Routing, Target
from gateway.errors import BadRequest, UpstreamConnectError, UpstreamStatus, UpstreamTimeout
from gateway.router import (
    ModelTable,
    TargetView,
    backoff_delay,
    plan,
    should_fall_back,
    weighted_order,
)
from tests.gateway_server import config_of

PROVIDERS = {
    "a": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1"},
    "b": {"kind": "openai", "base_url": "http://127.0.0.1:2/v1"},
    "c": {"kind": "openai", "base_url": "http://127.0.0.1:3/v1"},
    "cloud": {"kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "k"},
    "nokey": {"kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "${NOPE}"},
}


def model(**fields: object) -> tuple[Model, dict[str, Provider]]:
    raw = {"providers": PROVIDERS, "models": [{"name": "m", **fields}]}
    config = config_of(raw)
    return config.models[0], config.providers


def names(targets: Iterable[Target]) -> list[str]:
    return [t.provider for t in targets]


def resolved_name(table: ModelTable, name: str) -> str:
    found = table.resolve(name)
    assert found is not None, name
    return found.name


def test_ordered_plan_follows_the_file() -> None:
    m, providers = model(targets=[{"provider": p, "model": "x"} for p in "cab"])
    assert names(plan(m, providers, {}, 0.0, random.Random(1))) == ["c", "a", "b"]


def test_priority_tiers_come_before_balance() -> None:
    m, providers = model(
        balance="weighted",
        targets=[
            {"provider": "c", "model": "x", "priority": 1},
            {"provider": "a", "model": "x"},
            {"provider": "b", "model": "x"},
        ],
    )
    for seed in range(20):
        assert names(plan(m, providers, {}, 0.0, random.Random(seed)))[-1] == "c"


def test_targets_cooling_down_go_last_but_stay() -> None:
    m, providers = model(targets=[{"provider": p, "model": "x"} for p in "abc"])
    views = {"a/x": TargetView(cooling_until=100.0)}
    assert names(plan(m, providers, views, 50.0, random.Random())) == ["b", "c", "a"]
    # Once the cooldown has passed, the configured order is back.
    assert names(plan(m, providers, views, 150.0, random.Random())) == ["a", "b", "c"]


def test_least_inflight_prefers_the_idle_target_and_keeps_order_on_ties() -> None:
    m, providers = model(
        balance="least_inflight", targets=[{"provider": p, "model": "x"} for p in "abc"]
    )
    views = {"a/x": TargetView(inflight=3), "b/x": TargetView(inflight=1)}
    assert names(plan(m, providers, views, 0.0, random.Random())) == ["c", "b", "a"]
    assert names(plan(m, providers, {}, 0.0, random.Random())) == ["a", "b", "c"]


def test_weighted_order_follows_weights() -> None:
    m, providers = model(
        balance="weighted",
        targets=[
            {"provider": "a", "model": "x", "weight": 3},
            {"provider": "b", "model": "x", "weight": 1},
        ],
    )
    rng = random.Random(7)
    firsts = Counter(plan(m, providers, {}, 0.0, rng)[0].provider for _ in range(4000))
    assert 0.70 < firsts["a"] / 4000 < 0.80
    # Every target stays in the plan as a fallback.
    assert sorted(names(weighted_order(m.targets, rng))) == ["a", "b"]


def test_local_only_never_plans_a_cloud_target() -> None:
    m, providers = model(
        local_only=True,
        targets=[{"provider": "cloud", "model": "x"}, {"provider": "a", "model": "x"}],
    )
    for seed in range(10):
        assert names(plan(m, providers, {}, 0.0, random.Random(seed))) == ["a"]


def test_provider_without_its_secret_is_skipped() -> None:
    m, providers = model(
        targets=[{"provider": "nokey", "model": "x"}, {"provider": "a", "model": "x"}]
    )
    assert names(plan(m, providers, {}, 0.0, random.Random())) == ["a"]


def test_aliases_resolve_to_the_model() -> None:
    config = config_of(
        {
            "providers": PROVIDERS,
            "models": [
                {"name": "m", "aliases": ["gpt-4o"], "targets": [{"provider": "a", "model": "x"}]}
            ],
        }
    )
    table = ModelTable(config)
    assert table.resolve("gpt-4o") is table.resolve("m") is config.models[0]
    assert table.resolve("nope") is None
    assert table.names() == ["gpt-4o", "m"]


def test_fallback_decision() -> None:
    assert should_fall_back(UpstreamConnectError("refused"))
    assert should_fall_back(UpstreamTimeout("slow"))
    assert should_fall_back(UpstreamStatus(429, b"{}"))
    assert should_fall_back(UpstreamStatus(503, b"{}"))
    assert not should_fall_back(UpstreamStatus(400, b'{"error":{"message":"bad"}}'))
    assert not should_fall_back(UpstreamStatus(404, b""))
    assert not should_fall_back(BadRequest("client error"))


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    routing = Routing(backoff_seconds=0.5, backoff_max_seconds=3.0)
    rng = random.Random(3)
    first = [backoff_delay(1, routing, rng, None) for _ in range(50)]
    third = [backoff_delay(3, routing, rng, None) for _ in range(50)]
    assert all(0.25 <= d <= 0.5 for d in first)
    assert all(1.0 <= d <= 2.0 for d in third)
    assert all(d <= 3.0 for d in (backoff_delay(10, routing, rng, None) for _ in range(50)))
    assert backoff_delay(1, routing, rng, retry_after=2.0) >= 2.0
    assert backoff_delay(1, routing, rng, retry_after=60.0) == 3.0


def test_upstream_status_classifies_and_keeps_the_message() -> None:
    err = UpstreamStatus(400, b'{"error":{"message":"context too long","type":"x"}}')
    assert err.status == 400 and "context too long" in err.message
    assert UpstreamStatus(500, b"boom").status == 502
    assert UpstreamStatus(429, b"{}").status == 429
    assert "plain string" in UpstreamStatus(404, b'{"error": "plain string"}').message


def test_name_patterns_come_after_every_exact_name_in_file_order() -> None:
    raw = {
        "providers": PROVIDERS,
        "models": [
            {"name": "claude-exact", "targets": [{"provider": "a", "model": "x"}]},
            {
                "name": "opus",
                "patterns": ["claude-opus-*"],
                "targets": [{"provider": "a", "model": "x"}],
            },
            {
                "name": "coder",
                "patterns": ["claude-*", "gpt-5*"],
                "targets": [{"provider": "b", "model": "x"}],
            },
        ],
    }
    table = ModelTable(config_of(raw))
    assert resolved_name(table, "claude-exact") == "claude-exact"
    assert resolved_name(table, "claude-opus-4-1") == "opus"
    assert resolved_name(table, "claude-sonnet-4-5-20250929") == "coder"
    assert resolved_name(table, "gpt-5-codex") == "coder"
    assert table.resolve("Claude-sonnet") is None, "patterns are case-sensitive"
    assert table.resolve("gpt-4o") is None
