"""An upstream's 501 is the client's answer, not an outage.

llama-server started without ``--embeddings`` answers ``/v1/embeddings`` with 501: asking it
again, or failing over to the next target, cannot help, and must not cool the target down for
the requests it does serve. The client gets the 501 in its own protocol's envelope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from anthropic import AsyncAnthropic

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RunningGateway, FakeOpenAI, FakeOpenAI]]:
    """A llama-server-like first target and a canary second one, with retries to spare."""
    async with FakeOpenAI(flavor="llamacpp") as local, FakeOpenAI() as canary:
        raw: dict[str, Any] = {
            "providers": {
                "local": {"kind": "llamacpp", "base_url": local.url},
                "canary": {"kind": "openai", "base_url": canary.url, "api_key": "sk-test"},
            },
            "models": [
                {
                    "name": "m",
                    "targets": [
                        {"provider": "local", "model": "ok", "priority": 0},
                        {"provider": "canary", "model": "ok", "priority": 1},
                    ],
                }
            ],
            "routing": {"retries": 2, "backoff_seconds": 0.01},
        }
        async with running_gateway(config_of(raw)) as gw:
            yield gw, local, canary


def _posts(fake: FakeOpenAI) -> list[str]:
    return [r.path for r in fake.requests if r.method == "POST"]


async def test_a_501_on_embeddings_reaches_the_client_once_and_nothing_fails_over(
    pair: tuple[RunningGateway, FakeOpenAI, FakeOpenAI],
) -> None:
    gw, local, canary = pair
    local.scenario = "error-501"
    client = gw.openai(max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.embeddings.create(model="m", input=["a cat"])
    assert caught.value.status_code == 501
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "not_implemented" and "HTTP 501" in body["message"]
    assert _posts(local) == ["/v1/embeddings"]  # asked once, not once per retry
    assert _posts(canary) == []  # no fail-over
    # The target still serves what it can: the refusal did not cool it down.
    local.scenario = None
    reply = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "echo: hi"
    assert _posts(local) == ["/v1/embeddings", "/v1/chat/completions"]
    assert _posts(canary) == []


async def test_a_501_reaches_claude_clients_in_anthropics_envelope(
    pair: tuple[RunningGateway, FakeOpenAI, FakeOpenAI],
) -> None:
    gw, local, canary = pair
    local.scenario = "error-501"
    client = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
    try:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(
                model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        await client.close()
    assert caught.value.status_code == 501
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert "HTTP 501" in body["error"]["message"]
    assert _posts(local) == ["/v1/chat/completions"]
    assert _posts(canary) == []
