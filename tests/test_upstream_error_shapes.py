"""Upstream failures reach every client in the shape it recovers from.

- An upstream's own context refusal (Anthropic's "prompt is too long: N tokens > M maximum",
  OpenAI's ``context_length_exceeded``) becomes the gateway's ``ContextExceeded``: Anthropic
  clients read Anthropic's words (Claude Code compacts on them), OpenAI clients the code.
- ``/v1/models`` refusals are in Anthropic's envelope for Anthropic's SDK.
- Bodies in a coding nobody here decodes, or too large, are clean protocol errors.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import msgspec
import openai
import pytest
from anthropic import AsyncAnthropic

from adapters.base import Operation, UpstreamRequest
from adapters.builtin import default_registry
from gateway.config import Provider, Timeouts
from gateway.errors import UpstreamProtocolError
from gateway.keys import connect, create_key
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

HI: Any = [{"role": "user", "content": "a prompt far too long for this model"}]
TOO_LONG = re.compile(r"^prompt is too long: (\d+) tokens > (\d+) maximum")


@pytest.fixture
async def claude_up() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="sk-ant-test") as upstream:
        yield upstream


@pytest.fixture
async def cloud_up() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def _gateway(claude_up: FakeAnthropic, cloud_up: FakeOpenAI) -> Any:
    raw = {
        "providers": {
            "claude": {"kind": "anthropic", "base_url": claude_up.url, "api_key": "sk-ant-test"},
            "cloud": {"kind": "openai", "base_url": cloud_up.url, "api_key": "sk-test"},
        },
        "models": [
            {"name": "claude", "targets": [{"provider": "claude", "model": "prompt-too-long"}]},
            {"name": "gpt", "targets": [{"provider": "cloud", "model": "context-exceeded"}]},
        ],
        "routing": {"retries": 0},
    }
    return running_gateway(config_of(raw))


def _claude(gw: RunningGateway, key: str = "unused") -> AsyncAnthropic:
    return AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)


async def _anthropic_refusal(gw: RunningGateway, model: str, stream: bool) -> dict[str, Any]:
    client = _claude(gw)
    try:
        with pytest.raises(anthropic.BadRequestError) as caught:
            if stream:
                async with client.messages.stream(
                    model=model, max_tokens=16, messages=HI
                ) as events:
                    await events.get_final_message()
            else:
                await client.messages.create(model=model, max_tokens=16, messages=HI)
    finally:
        await client.close()
    body = caught.value.body
    assert isinstance(body, dict)
    return body


async def _openai_refusal(gw: RunningGateway, model: str, stream: bool) -> openai.BadRequestError:
    client = gw.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        if stream:
            events = await client.chat.completions.create(model=model, messages=HI, stream=True)
            async for _ in events:
                pass
        else:
            await client.chat.completions.create(model=model, messages=HI)
    return caught.value


# --- context refusals ------------------------------------------------------------------------


def _assert_prompt_too_long(body: dict[str, Any], context_window: int) -> None:
    """Anthropic's own refusal: its type, and its message with nothing in front."""
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    found = TOO_LONG.match(error["message"])
    assert found, error["message"]  # no "upstream returned HTTP 400: " in front
    assert int(found[1]) > int(found[2]) == context_window


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropics_prompt_too_long_reaches_claude_clients_in_its_own_words(
    claude_up: FakeAnthropic, cloud_up: FakeOpenAI, stream: bool
) -> None:
    async with _gateway(claude_up, cloud_up) as gw:
        body = await _anthropic_refusal(gw, "claude", stream)
    _assert_prompt_too_long(body, claude_up.context_window)


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropics_prompt_too_long_reaches_openai_clients_as_context_length_exceeded(
    claude_up: FakeAnthropic, cloud_up: FakeOpenAI, stream: bool
) -> None:
    async with _gateway(claude_up, cloud_up) as gw:
        refused = await _openai_refusal(gw, "claude", stream)
    assert refused.status_code == 400
    assert refused.code == "context_length_exceeded"
    assert isinstance(refused.body, dict) and TOO_LONG.match(refused.body["message"])


@pytest.mark.parametrize("stream", [False, True])
async def test_openais_context_length_exceeded_keeps_its_code_for_openai_clients(
    claude_up: FakeAnthropic, cloud_up: FakeOpenAI, stream: bool
) -> None:
    async with _gateway(claude_up, cloud_up) as gw:
        refused = await _openai_refusal(gw, "gpt", stream)
    assert refused.status_code == 400
    assert refused.code == "context_length_exceeded"  # was upstream_rejected
    assert refused.type == "invalid_request_error"
    assert f"> {cloud_up.context_window} maximum" in str(refused.body)


@pytest.mark.parametrize("stream", [False, True])
async def test_openais_context_length_exceeded_reaches_claude_clients_as_prompt_too_long(
    claude_up: FakeAnthropic, cloud_up: FakeOpenAI, stream: bool
) -> None:
    async with _gateway(claude_up, cloud_up) as gw:
        body = await _anthropic_refusal(gw, "gpt", stream)
    _assert_prompt_too_long(body, cloud_up.context_window)


# --- /v1/models refusals -------------------------------------------------------------------------


async def test_a_wrong_key_on_models_gets_anthropics_envelope_for_anthropic_clients(
    claude_up: FakeAnthropic, cloud_up: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    connection = connect(str(database))
    create_key(connection, "test", "agent-1")
    connection.close()
    raw = {
        "server": {"database": str(database)},
        "providers": {"cloud": {"kind": "openai", "base_url": cloud_up.url, "api_key": "k"}},
        "models": [{"name": "gpt", "targets": [{"provider": "cloud", "model": "ok"}]}],
    }
    async with running_gateway(config_of(raw)) as gw:
        client = _claude(gw, key="sk-wrong")
        with pytest.raises(anthropic.AuthenticationError) as listed:
            await client.models.list()
        with pytest.raises(anthropic.AuthenticationError) as one:
            await client.models.retrieve("gpt")
        await client.close()
        with pytest.raises(openai.AuthenticationError) as plain:
            await gw.openai(api_key="sk-wrong").models.list()
    for refused in (listed.value, one.value):
        body = refused.body
        assert isinstance(body, dict)
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
        assert body["error"]["message"] and body["request_id"]
    assert plain.value.code == "invalid_api_key"  # OpenAI clients keep OpenAI's envelope


async def test_a_rebound_host_on_models_gets_403_in_anthropics_envelope(
    claude_up: FakeAnthropic, cloud_up: FakeOpenAI
) -> None:
    async with _gateway(claude_up, cloud_up) as gw, aiohttp.ClientSession() as session:
        headers = {"Host": "evil.example", "anthropic-version": "2023-06-01"}
        answers = []
        for path in ("/v1/models", "/v1/models/gpt"):
            async with session.get(gw.url + path, headers=headers) as response:
                answers.append((response.status, await response.json()))
        async with session.get(gw.url + "/v1/models", headers={"Host": "evil.example"}) as r:
            plain = (r.status, await r.json())
    for status, body in answers:
        assert status == 403
        assert body["type"] == "error"
        assert body["error"]["type"] == "permission_error"
        assert body["request_id"]
    assert plain[0] == 403 and set(plain[1]) == {"error"}


# --- encodings and sizes -------------------------------------------------------------------------


async def _send(upstream: FakeOpenAI, text: str = "hi", **timeouts: Any) -> None:
    provider = Provider(
        kind="openai-compatible", base_url=upstream.url, local=True, timeouts=Timeouts(**timeouts)
    )
    async with aiohttp.ClientSession() as session:
        adapter = default_registry().create("p", provider, session)
        messages = msgspec.Raw(msgspec.json.encode([{"role": "user", "content": text}]))
        request = UpstreamRequest(
            op=Operation.CHAT,
            fields={"messages": messages},
            model="ok",
            stream=False,
            request_id="req-1",
        )
        await adapter.send(request)


@pytest.mark.parametrize("coding", ["br", "zstd"])
async def test_a_coding_aiohttp_cannot_decode_is_a_protocol_error(
    cloud_up: FakeOpenAI, coding: str
) -> None:
    cloud_up.compress = coding
    with pytest.raises(UpstreamProtocolError, match="cannot be decoded"):
        await _send(cloud_up)


async def test_a_non_stream_answer_in_an_unknown_coding_is_refused_like_a_stream(
    cloud_up: FakeOpenAI,
) -> None:
    cloud_up.compress = "compress"
    with pytest.raises(UpstreamProtocolError, match="Content-Encoding 'compress'"):
        await _send(cloud_up)


async def test_a_non_stream_answer_over_max_body_bytes_is_a_protocol_error(
    cloud_up: FakeOpenAI,
) -> None:
    await _send(cloud_up, "x" * 100, max_body_bytes=1024)  # small answers pass
    with pytest.raises(UpstreamProtocolError, match=r"exceeds 1024 bytes .*max_body_bytes"):
        await _send(cloud_up, "x" * 4000, max_body_bytes=1024)


async def test_an_undecodable_answer_falls_back_to_the_next_target(cloud_up: FakeOpenAI) -> None:
    async with FakeOpenAI() as backup:
        cloud_up.compress = "br"
        raw = {
            "providers": {
                "bad": {"kind": "openai-compatible", "base_url": cloud_up.url, "local": True},
                "good": {"kind": "openai-compatible", "base_url": backup.url, "local": True},
            },
            "models": [
                {
                    "name": "m",
                    "targets": [
                        {"provider": "bad", "model": "ok", "priority": 0},
                        {"provider": "good", "model": "ok", "priority": 1},
                    ],
                }
            ],
            "routing": {"retries": 0},
        }
        async with running_gateway(config_of(raw)) as gw:
            reply = await gw.openai().chat.completions.create(model="m", messages=HI)
    assert reply.choices[0].message.content == "echo: " + HI[0]["content"]
    posts = [r for up in (cloud_up, backup) for r in up.requests if r.method == "POST"]
    assert [r.path for r in posts] == ["/v1/chat/completions"] * 2  # one try each
