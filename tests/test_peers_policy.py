"""Peers' pure parts: which copy of a role goes first, what a failure is, the peers: section."""

from __future__ import annotations

import pytest

from gateway.config import from_mapping
from gateway.config.peers import HOP_HEADER, Failures
from gateway.config.upstreams import Target
from gateway.errors import (
    ConfigError,
    UpstreamBodyTimeout,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
)
from gateway.peers.policy import RoleView, action, classify, order, rank, without_peers
from gateway.router import target_key

LOCAL = Target(provider="role:coder", model="coder")
PEER_A = Target(provider="peer:a", model="coder")
PEER_B = Target(provider="peer:b", model="coder")
CLOUD = Target(provider="cloud", model="gpt")


def ranked(**views: tuple[RoleView | None, bool, bool]) -> dict[str, tuple[int, int, int]]:
    names = {"local": LOCAL, "a": PEER_A, "b": PEER_B}
    return {target_key(names[n]): rank(*v) for n, v in views.items()}


def test_a_peer_with_the_role_loaded_goes_before_a_local_copy_that_must_load_it() -> None:
    ranks = ranked(
        local=(RoleView("stopped"), False, False),
        a=(RoleView("stopped"), True, False),
        b=(RoleView("ready"), True, False),
    )
    assert order([LOCAL, PEER_A, PEER_B, CLOUD], ranks) == [PEER_B, LOCAL, PEER_A, CLOUD]


def test_the_local_copy_wins_a_tie_and_the_shorter_queue_wins_among_loaded_copies() -> None:
    ranks = ranked(
        local=(RoleView("ready", queue=3), False, False),
        a=(RoleView("ready", queue=0), True, False),
        b=(RoleView("ready", queue=3), True, False),
    )
    assert order([PEER_B, LOCAL, PEER_A], ranks) == [PEER_A, LOCAL, PEER_B]


def test_soonest_to_load_means_loading_then_asleep_then_stopped() -> None:
    ranks = ranked(
        local=(RoleView("stopped"), False, False),
        a=(RoleView("sleeping"), True, False),
        b=(RoleView("starting"), True, False),
    )
    assert order([LOCAL, PEER_A, PEER_B], ranks) == [PEER_B, PEER_A, LOCAL]


def test_unreachable_failed_and_cooling_copies_go_after_the_fallback_chain() -> None:
    ranks = ranked(
        local=(RoleView("failed"), False, False),
        a=(None, True, False),
        b=(RoleView("ready"), True, True),
    )
    assert order([LOCAL, PEER_A, PEER_B, CLOUD], ranks) == [CLOUD, LOCAL, PEER_A, PEER_B]


def test_a_model_without_copies_keeps_the_routers_order() -> None:
    assert order([CLOUD, LOCAL], {}) == [CLOUD, LOCAL]


def test_a_request_that_came_from_a_peer_never_goes_to_a_peer_again() -> None:
    assert without_peers([PEER_A, LOCAL, PEER_B, CLOUD]) == [LOCAL, CLOUD]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (UpstreamConnectError("cannot connect"), "connect"),
        (UpstreamTimeout("upstream timed out"), "headers_timeout"),
        (UpstreamBodyTimeout("no content"), "body_timeout"),
        (UpstreamStatus(503, b"{}"), "status_5xx"),
        (UpstreamStatus(429, b"{}", retry_after=2.0), "status_429"),
        (UpstreamStatus(400, b"{}"), None),
        (UpstreamStatus(404, b"{}"), None),
        (UpstreamStatus(501, b"{}"), None),
        (UpstreamProtocolError("not JSON"), None),
    ],
)
def test_failures_are_classified_and_4xx_never_is(error: UpstreamStatus, kind: str | None) -> None:
    assert classify(error) == kind


def test_each_failure_class_has_its_own_action() -> None:
    failures = Failures(connect="fail", status_429="fail")
    assert action(failures, UpstreamConnectError("refused")) == "fail"
    assert action(failures, UpstreamStatus(429, b"{}")) == "fail"
    assert action(failures, UpstreamStatus(502, b"{}")) == "next"
    # The default: a peer that has the prompt and went quiet is not sent the prompt again.
    assert action(Failures(), UpstreamBodyTimeout("quiet")) == "fail"
    assert action(Failures(), UpstreamStatus(400, b"{}")) is None


def test_peer_roles_join_the_local_model_and_become_models_of_their_own() -> None:
    config = from_mapping(
        {
            "server": {"port": 9001},
            "roles": {
                "coder": {"engine": "external", "model": "m", "base_url": "http://127.0.0.1:1"}
            },
            "peers": {
                "gpu1": {"url": "http://10.0.0.2:8080/", "key": "k1", "roles": ["coder", "big"]},
            },
        },
        "test",
        {},
    )
    models = {m.name: m for m in config.models}
    assert [t.provider for t in models["coder"].targets] == ["role:coder", "peer:gpu1"]
    assert [(t.provider, t.model) for t in models["big"].targets] == [("peer:gpu1", "big")]
    provider = config.providers["peer:gpu1"]
    assert provider.base_url == "http://10.0.0.2:8080/v1" and provider.api_key == "k1"
    assert provider.headers == {HOP_HEADER: "127.0.0.1:9001"}
    # A peer on the local network may serve local_only models (the implicit role model is one).
    assert models["coder"].local_only and provider.is_local


def test_a_bad_peer_names_its_key_path() -> None:
    raw = {"peers": {"gpu1": {"url": "ftp://x", "roles": [], "failures": {"connect": "next"}}}}
    with pytest.raises(ConfigError) as caught:
        from_mapping(raw, "test", {})
    assert "peers.gpu1.url: expected an http(s) URL" in str(caught.value)
    assert "peers.gpu1.roles: expected the roles it serves" in str(caught.value)
    # msgspec names a mapping's entries [...], as for every other section.
    with pytest.raises(ConfigError, match=r"peers\[\.\.\.\]\.failures\.connect: Invalid enum"):
        from_mapping(
            {"peers": {"gpu1": {"url": "http://x", "roles": ["a"], "failures": {"connect": "x"}}}},
            "test",
            {},
        )
