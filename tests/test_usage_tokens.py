"""Tokens in the usage log, /v1/usage and /metrics are the ones the client was told, on every
ingress: cached prompt tokens for /v1/messages and /v1/responses (they used to be recorded
as 0), and a fair count for a stream the client left early (it used to count SSE bytes).

A real llama-server serves the repeated prompt from its cache; fake upstreams speak the exact
wire format where a scenario (a stalled stream, Anthropic's cache reads) needs scripting.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from gateway.contract import WireProtocol
from gateway.state import GatewayState
from gateway.translate import ChatUsage, PromptDetails
from gateway.translate.anthropic_replies import render_message
from gateway.usage import UsageRecord
from tests.engines.engines import HELLO_TEXT, LlamaServer
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

# Long enough that a cache hit is unmistakable, short enough for a tiny model's context.
LONG_SYSTEM = " ".join(f"Rule {i}: answer briefly and never invent file names." for i in range(40))


def rows(gw: RunningGateway) -> list[UsageRecord]:
    state: GatewayState = gw.app.state.gateway
    return list(state.recent.rows)


async def next_row(gw: RunningGateway, seen: int) -> UsageRecord:
    """The usage row after the first ``seen``: recorded just after the answer went out."""
    for _ in range(1000):
        recorded = rows(gw)
        if len(recorded) > seen:
            return recorded[seen]
        await asyncio.sleep(0.01)
    raise AssertionError("no usage row was recorded")


async def metrics_text(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as r:
        return await r.text()


# --- pure: the translators hand the cached tokens on ---------------------------------------------


def test_translated_usage_keeps_the_cached_prompt_tokens() -> None:
    usage = ChatUsage(300, 10, 310, PromptDetails(cached_tokens=280))
    wire = usage.wire()
    assert (wire.prompt_tokens, wire.completion_tokens, wire.cached_tokens) == (300, 10, 280)
    assert ChatUsage(5, 1).wire().prompt_tokens_details is None


def test_a_native_anthropic_message_reports_its_cache_reads() -> None:
    body = json.dumps(
        {
            "type": "message",
            "usage": {
                "input_tokens": 5,
                "cache_creation_input_tokens": 4,
                "cache_read_input_tokens": 11,
                "output_tokens": 3,
            },
        }
    ).encode()
    _, usage = render_message(body, "m", False, protocol=WireProtocol.ANTHROPIC)
    assert usage is not None and (usage.prompt_tokens, usage.cached_tokens) == (20, 11)


async def test_anthropic_upstream_cache_reads_are_recorded_stream_and_not() -> None:
    async with FakeAnthropic(api_key="sk-ant-test", cache_read=11, cache_creation=4) as claude:
        config = config_of(
            {
                "providers": {
                    "claude": {
                        "kind": "anthropic",
                        "base_url": claude.url,
                        "api_key": "sk-ant-test",
                    }
                },
                "models": [{"name": "cloud", "targets": [{"provider": "claude", "model": "ok"}]}],
            }
        )
        async with running_gateway(config) as gw:
            client = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
            request: dict[str, Any] = {
                "model": "cloud",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}],
            }
            message = await client.messages.create(**request)
            async with client.messages.stream(**request) as stream:
                final = await stream.get_final_message()
            await client.close()
            recorded = [await next_row(gw, 0), await next_row(gw, 1)]
            text = await metrics_text(gw)
    seen = [message.usage.cache_read_input_tokens, final.usage.cache_read_input_tokens]
    assert seen == [11, 11]
    assert [r.cached_tokens for r in recorded] == seen
    assert 'turnout_prompt_tokens_cached_total{model="cloud",provider="claude"} 22.0' in text


# --- a real llama-server's prompt cache, through every ingress -----------------------------------


def engine_gateway(engine: LlamaServer) -> Any:
    return running_gateway(
        config_of(
            {
                "providers": {"engine": {"kind": "llamacpp", "base_url": engine.url + "/v1"}},
                "models": [{"name": "local", "targets": [{"provider": "engine", "model": "x"}]}],
            }
        )
    )


async def chat_turn(gw: RunningGateway, stream: bool) -> int:
    client = AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    messages: Any = [
        {"role": "system", "content": LONG_SYSTEM},
        {"role": "user", "content": "hi"},
    ]
    if stream:
        chunks = await client.chat.completions.create(
            model="local",
            messages=messages,
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage async for c in chunks if c.usage is not None][-1]
    else:
        reply = await client.chat.completions.create(
            model="local", messages=messages, max_tokens=32
        )
        assert reply.usage is not None
        usage = reply.usage
    await client.close()
    assert usage.prompt_tokens_details is not None
    return usage.prompt_tokens_details.cached_tokens or 0


async def messages_turn(gw: RunningGateway, stream: bool) -> int:
    client = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
    request: dict[str, Any] = {
        "model": "local",
        "max_tokens": 32,
        "system": LONG_SYSTEM,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if stream:
        async with client.messages.stream(**request) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**request)
    await client.close()
    assert message.content[0].type == "text" and message.content[0].text == HELLO_TEXT
    return message.usage.cache_read_input_tokens or 0


async def responses_turn(gw: RunningGateway, stream: bool) -> int:
    client = AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    request: dict[str, Any] = {
        "model": "local",
        "instructions": LONG_SYSTEM,
        "input": "hi",
        "max_output_tokens": 32,
        "store": False,
    }
    if stream:
        async with client.responses.stream(**request) as events:
            response = await events.get_final_response()
    else:
        response = await client.responses.create(**request)
    await client.close()
    assert response.output_text == HELLO_TEXT and response.usage is not None
    return response.usage.input_tokens_details.cached_tokens


TURNS: dict[str, Callable[[RunningGateway, bool], Any]] = {
    "chat": chat_turn,
    "messages": messages_turn,
    "responses": responses_turn,
}


@pytest.mark.engine
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("ingress", list(TURNS))
async def test_a_repeated_prompt_records_the_cached_tokens_the_client_saw(
    llama_hello: LlamaServer, ingress: str, stream: bool
) -> None:
    async with engine_gateway(llama_hello) as gw:
        turn = TURNS[ingress]
        await turn(gw, stream)
        seen = await turn(gw, stream)
        first, second = await next_row(gw, 0), await next_row(gw, 1)
        text = await metrics_text(gw)
        writer = gw.app.state.gateway.usage
        for _ in range(500):
            if writer.depth() == 0:
                break
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.v1 + "/usage?group_by=model") as r:
                summary = (await r.json())["data"][0]
            async with session.get(gw.v1 + "/requests/series?since=1h") as r:
                dashboard = (await r.json())["totals"]  # what the dashboard's hit rate reads
    assert second.ingress == ingress and second.stream is stream
    assert seen > 0, "llama-server served the repeated prompt without its cache"
    assert second.cached_tokens == seen
    assert 0 < second.cached_tokens <= second.prompt_tokens and not second.estimated
    assert summary["cached_tokens"] == first.cached_tokens + second.cached_tokens
    assert dashboard["cached_tokens"] == summary["cached_tokens"]
    assert dashboard["prompt_tokens"] == summary["prompt_tokens"]
    total = first.cached_tokens + second.cached_tokens
    assert (
        f'turnout_prompt_tokens_cached_total{{model="local",provider="engine"}} {total}.0' in text
    )


# --- a stream the client leaves early ------------------------------------------------------------

CONTENT_DELTAS = 10


async def leave_after_silence(gw: RunningGateway, path: str, body: dict[str, Any]) -> bytes:
    """Read a stream until it goes quiet (the upstream stalled), then hang up."""
    received = b""
    async with aiohttp.ClientSession() as session, session.post(gw.url + path, json=body) as r:
        assert r.status == 200
        while True:
            try:
                chunk = await asyncio.wait_for(r.content.readany(), 0.5)
            except TimeoutError:
                break
            assert chunk, "the stream ended instead of stalling"
            received += chunk
    return received


STREAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": (
        "/v1/chat/completions",
        {
            "model": "cut",
            "stream": True,
            "messages": [{"role": "user", "content": "count to ten please"}],
        },
    ),
    "messages": (
        "/v1/messages",
        {
            "model": "cut",
            "stream": True,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "count to ten please"}],
        },
    ),
    "responses": (
        "/v1/responses",
        {"model": "cut", "stream": True, "input": "count to ten please"},
    ),
}


@pytest.mark.parametrize("ingress", list(STREAMS))
async def test_a_stream_left_early_records_about_the_tokens_generated(ingress: str) -> None:
    # llama.cpp's shape: a role-only chunk, then one token per chunk; the upstream stalls after
    # ten tokens and the client leaves.
    async with FakeOpenAI(
        flavor="llamacpp", stream_chunks=CONTENT_DELTAS + 5, mid_stream_after=1 + CONTENT_DELTAS
    ) as engine:
        config = config_of(
            {
                "providers": {"engine": {"kind": "llamacpp", "base_url": engine.url}},
                "models": [
                    {
                        "name": "cut",
                        "targets": [{"provider": "engine", "model": "stall-mid-stream"}],
                    }
                ],
            }
        )
        async with running_gateway(config) as gw:
            path, body = STREAMS[ingress]
            received = await leave_after_silence(gw, path, body)
            row = await next_row(gw, 0)
    assert received, "nothing was relayed before the client left"
    assert row.status == 499 and row.estimated and row.ingress == ingress
    # Counting SSE bytes made this ~120.
    assert CONTENT_DELTAS - 1 <= row.completion_tokens <= CONTENT_DELTAS + 1
