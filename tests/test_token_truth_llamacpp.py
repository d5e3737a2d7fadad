"""Token and context truth against a real llama-server role: count_tokens with the engine's own
template and tokenizer, input tokens in message_start, the engine's context in /v1/models, and
a prompt over that context refused the way the official SDKs' clients recover from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam, ToolParam
from openai.types.chat import ChatCompletionMessageParam

from gateway.engines.builtin import LLAMACPP_COMMAND
from gateway.engines.states import EngineState
from gateway.state import GatewayState
from tests.engines.engines import llama_server_binary
from tests.gateway_server import RunningGateway, config_of, running_gateway

pytestmark = pytest.mark.engine

# The engine runs with this context, whatever the role's configured `context` says: /v1/models
# must report the engine's number once it is loaded.
ENGINE_CTX = 512
CONFIGURED_CTX = 4096
SYSTEM = "You are terse."
MESSAGES: list[MessageParam] = [{"role": "user", "content": "What is the weather in Paris today?"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
# Far more tokens than ENGINE_CTX with the tiny models' vocabulary.
LONG_TEXT = "tell me about the weather " * 200
LONG: list[MessageParam] = [{"role": "user", "content": LONG_TEXT}]
LONG_CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": LONG_TEXT}]


@pytest.fixture
async def gw(tiny_models: dict[str, Path], tmp_path: Path) -> AsyncIterator[RunningGateway]:
    # The registered kind's command, with the engine's context fixed below the role's.
    template = [str(ENGINE_CTX) if part == "${CTX}" else part for part in LLAMACPP_COMMAND[1:]]
    command = [str(llama_server_binary()), *template, "-np", "1", "-t", "1"]
    tiny = {
        "engine": "llamacpp",
        "model": str(tiny_models["tiny-hello"]),
        "command": command,
        "context": CONFIGURED_CTX,
        "start_timeout_seconds": 60,
    }
    raw = {
        "roles": {"tiny": tiny},
        "engines": {"wait_timeout_seconds": 60, "log_dir": str(tmp_path)},
        "routing": {"retries": 0},
    }
    async with running_gateway(config_of(raw)) as running:
        yield running


def state_of(gw: RunningGateway) -> GatewayState:
    state: GatewayState = gw.app.state["gateway"]
    return state


def engine_state(gw: RunningGateway) -> EngineState:
    supervisor = state_of(gw).supervisor
    assert supervisor is not None
    return supervisor.status("tiny").state


def claude(gw: RunningGateway) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)


async def count(gw: RunningGateway, **body: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + "/v1/messages/count_tokens", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        counted = await response.json()
        assert list(counted) == ["input_tokens"]
        return counted["input_tokens"], response.headers["x-turnout-token-count"]


async def models(gw: RunningGateway, **headers: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + "/v1/models", headers=headers) as response,
    ):
        return await response.json()


def prompt_tokens(usage: Any) -> int:
    return int(
        usage.input_tokens
        + (usage.cache_read_input_tokens or 0)
        + (usage.cache_creation_input_tokens or 0)
    )


async def test_count_tokens_is_the_engines_own_count_of_the_templated_prompt(
    gw: RunningGateway,
) -> None:
    request = {"model": "tiny", "system": SYSTEM, "messages": MESSAGES, "tools": [WEATHER]}
    # Not loaded: an estimate, and counting does not load the model.
    estimate, source = await count(gw, **request)
    assert source == "estimate" and estimate > 0
    assert engine_state(gw) is EngineState.STOPPED

    client = claude(gw)
    await client.messages.create(model="tiny", max_tokens=4, messages=MESSAGES)
    assert engine_state(gw) is EngineState.READY
    counted, source = await count(gw, **request)
    message = await client.messages.create(
        model="tiny",
        max_tokens=4,
        system=SYSTEM,
        messages=MESSAGES,
        tools=[WEATHER],
    )
    await client.close()
    assert source == "upstream"
    # Exactly what the engine prefilled for the same request (tools and template included).
    assert counted == prompt_tokens(message.usage)
    assert counted != estimate


async def test_message_start_carries_the_prompt_tokens(gw: RunningGateway) -> None:
    client = claude(gw)
    for _ in range(2):  # the second turn is served from the engine's prompt cache
        starts, deltas, text = [], [], ""
        async with client.messages.stream(
            model="tiny",
            max_tokens=8,
            system=SYSTEM,
            messages=MESSAGES,
        ) as stream:
            async for event in stream:
                if event.type == "message_start":
                    starts.append(event.message.usage)
                elif event.type == "message_delta":
                    deltas.append(event.usage)
                elif event.type == "text":
                    text += event.text
        assert text and len(starts) == 1 and len(deltas) == 1
        start, end = starts[0], deltas[0]
        assert start.input_tokens + (start.cache_read_input_tokens or 0) > 0
        # message_start says what message_delta confirms at the end.
        assert prompt_tokens(start) == prompt_tokens(end)
        assert start.input_tokens == end.input_tokens
    await client.close()


async def test_models_publish_the_engines_real_context(gw: RunningGateway) -> None:
    listed = await models(gw)
    tiny = next(m for m in listed["data"] if m["id"] == "tiny")
    # Not loaded: what turnout will start it with (the role's `context`).
    assert tiny["context_window"] == CONFIGURED_CTX

    client = claude(gw)
    await client.messages.create(model="tiny", max_tokens=4, messages=MESSAGES)
    await client.close()
    listed = await models(gw)
    tiny = next(m for m in listed["data"] if m["id"] == "tiny")
    assert tiny["context_window"] == ENGINE_CTX
    assert tiny["targets"][0]["context_window"] == ENGINE_CTX
    shaped = await models(gw, **{"anthropic-version": "2023-06-01"})
    entry = next(m for m in shaped["data"] if m["id"] == "tiny")
    assert entry["type"] == "model" and entry["max_input_tokens"] == ENGINE_CTX


async def test_a_prompt_over_the_context_fails_the_way_clients_recover(
    gw: RunningGateway,
) -> None:
    client = claude(gw)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="tiny", max_tokens=8, messages=LONG)
    error = caught.value
    assert error.status_code == 400
    body: Any = error.body
    assert body["error"]["type"] == "invalid_request_error"
    message = body["error"]["message"]
    assert message.startswith("prompt is too long: ") and f"> {ENGINE_CTX} maximum" in message
    tokens = int(message.split(": ")[1].split(" tokens")[0])
    assert tokens > ENGINE_CTX

    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        async with client.messages.stream(
            model="tiny",
            max_tokens=8,
            messages=LONG,
        ) as stream:
            async for _ in stream:
                pass

    chat = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    for streamed in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            reply = await chat.chat.completions.create(
                model="tiny",
                max_tokens=8,
                messages=LONG_CHAT,
                stream=streamed,
            )
            if streamed:
                assert isinstance(reply, openai.AsyncStream)
                async for _ in reply:
                    pass
        assert refused.value.code == "context_length_exceeded"
        assert refused.value.status_code == 400

    # Not an engine failure: no cooldown, the next (short) request is served at once.
    reply = await chat.chat.completions.create(
        model="tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    book = state_of(gw).book
    assert all(book[key].cooling_until == 0 for key in book)
    await chat.close()
    await client.close()
