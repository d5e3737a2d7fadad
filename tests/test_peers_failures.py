"""Each failure class of a peer takes its own configured action, on real HTTP (no engines).

The front names two peers, ``bad`` (listed first) and ``good``: fake OpenAI servers on loopback
(neither has an /engine/status, so both rank alike and the router's order decides: ``bad``
first). ``bad`` fails one way; its ``failures.<class>`` says whether ``good`` gets the request
(``next``) or the client gets ``bad``'s failure (``fail``). A 4xx is no failure class: the
client's own mistake is its answer, whatever the actions say.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import config_of, running_gateway

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def peers() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI]]:
    async with FakeOpenAI() as bad, FakeOpenAI() as good:
        yield bad, good


def front(bad: FakeOpenAI, good: FakeOpenAI, **failures: str) -> Any:
    def peer(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
        url = fake.url.removesuffix("/v1")
        return {"url": url, "roles": ["fast"], "poll_seconds": 0.5, **extra}

    timeouts = {"connect": 2, "first_byte": 0.5, "idle": 0.5}
    return config_of(
        {
            "routing": {"retries": 0},
            "peers": {
                "bad": peer(bad, failures=failures, timeouts=timeouts),
                "good": peer(good),
            },
        }
    )


def chats(fake: FakeOpenAI) -> int:
    """Chat requests the fake received (the front also reads its /engine/* now and then)."""
    return sum(1 for r in fake.requests if r.method == "POST")


async def ask(url: str, stream: bool = False) -> tuple[int, str, str]:
    """Status, who answered (x-turnout-target) and the body."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/chat/completions", json={**CHAT, "stream": stream}) as response,
    ):
        return response.status, response.headers.get("x-turnout-target", ""), await response.text()


@pytest.mark.parametrize(
    ("scenario", "failure_class"),
    [
        ("error-503", "status_5xx"),
        ("error-429", "status_429"),
        ("slow-first-byte", "headers_timeout"),
    ],
)
@pytest.mark.parametrize("action", ["next", "fail"])
async def test_a_peers_failure_moves_on_or_answers_per_its_class(
    peers: tuple[FakeOpenAI, FakeOpenAI], scenario: str, failure_class: str, action: str
) -> None:
    bad, good = peers
    bad.scenario = scenario
    bad.first_byte_delay = 3.0
    async with running_gateway(front(bad, good, **{failure_class: action})) as gw:
        status, target, body = await ask(gw.url)
    assert chats(bad) == 1, "the bad peer was tried first"
    if action == "next":
        assert (status, target) == (200, "peer:good/fast"), body
        assert chats(good) == 1
    else:
        assert status != 200 and not chats(good), body
        if failure_class == "status_429":
            assert status == 429, body


async def test_a_stream_that_stalls_after_its_head_fails_by_default(
    peers: tuple[FakeOpenAI, FakeOpenAI],
) -> None:
    # body_timeout defaults to fail: the peer has the prompt; another would prefill it again.
    bad, good = peers
    bad.scenario = "stall-mid-stream"
    bad.mid_stream_after = 0
    async with running_gateway(front(bad, good)) as gw:
        _, _, body = await ask(gw.url, stream=True)
    assert not chats(good), body
    assert "error" in body


@pytest.mark.parametrize("action", ["next", "fail"])
async def test_a_4xx_from_a_peer_is_the_clients_answer_whatever_the_actions(
    peers: tuple[FakeOpenAI, FakeOpenAI], action: str
) -> None:
    bad, good = peers
    bad.scenario = "error-400"
    classes = ("connect", "headers_timeout", "body_timeout", "status_5xx", "status_429")
    async with running_gateway(front(bad, good, **dict.fromkeys(classes, action))) as gw:
        status, _, body = await ask(gw.url)
    assert status == 400, body
    assert not chats(good)
