"""``POST /v1/messages`` end to end: the official anthropic SDK (and Claude Code's raw requests)
against a real turnout, over a fake OpenAI upstream, a fake Anthropic upstream, and a real
llama-server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam, ToolParam

from tests.engines.engines import HELLO_TEXT, LlamaServer
from tests.fakes.anthropic_upstream import FakeAnthropic, parse_events
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def openai_up() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=5) as upstream:
        yield upstream


@pytest.fixture
async def anthropic_up() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="sk-ant-test", cache_read=11, cache_creation=4) as upstream:
        yield upstream


def gateway(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic | None = None, **server: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    providers: dict[str, Any] = {
        "local": {"kind": "openai-compatible", "base_url": openai_up.url, "local": True}
    }
    models: list[dict[str, Any]] = [
        # Claude Code's model names, whatever the version, go to the local engine.
        {
            "name": "coder",
            "patterns": ["claude-*"],
            "targets": [{"provider": "local", "model": "tools"}],
        },
        {"name": "chat", "targets": [{"provider": "local", "model": "ok"}]},
        {"name": "broken", "targets": [{"provider": "local", "model": "error-mid-stream"}]},
        {"name": "cut", "targets": [{"provider": "local", "model": "drop-mid-stream"}]},
        {"name": "busy", "targets": [{"provider": "local", "model": "error-429"}]},
        {"name": "slow", "targets": [{"provider": "local", "model": "slow-first-byte"}]},
    ]
    if anthropic_up is not None:
        providers["claude"] = {
            "kind": "anthropic",
            "base_url": anthropic_up.url,
            "api_key": "sk-ant-test",
        }
        models += [
            {"name": "cloud", "targets": [{"provider": "claude", "model": "ok"}]},
            {"name": "cloud-tools", "targets": [{"provider": "claude", "model": "tools"}]},
            {"name": "cloud-thinking", "targets": [{"provider": "claude", "model": "thinking"}]},
            {
                "name": "cloud-broken",
                "targets": [{"provider": "claude", "model": "error-mid-stream"}],
            },
        ]
    raw = {"providers": providers, "models": models, "routing": {"retries": 0}, "server": server}
    return running_gateway(config_of(raw))


def client(gw: RunningGateway, **options: Any) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0, **options)


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    """The ``error`` object of Anthropic's error envelope."""
    body = exc.body
    assert isinstance(body, dict) and body["type"] == "error"
    error: dict[str, Any] = body["error"]
    return error


def posts(upstream: FakeOpenAI | FakeAnthropic) -> list[Any]:
    return [r for r in upstream.requests if r.method == "POST"]


# --- over an OpenAI-format upstream ------------------------------------------------------------


async def test_sdk_text_reply_streaming_and_not(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        claude = client(gw)
        message = await claude.messages.create(model="chat", max_tokens=64, messages=HI)
        assert message.content[0].type == "text" and message.content[0].text == "echo: hi"
        assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
        assert message.model == "chat"
        async with claude.messages.stream(model="chat", max_tokens=64, messages=HI) as stream:
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
        await claude.close()
    assert "".join(texts) == "echo: hi" and len(texts) > 1
    assert final.stop_reason == "end_turn" and final.usage.input_tokens > 0
    sent = posts(openai_up)[-1].body
    assert sent["model"] == "ok" and sent["messages"] == HI and sent["max_tokens"] == 64
    assert sent["stream_options"] == {"include_usage": True}


async def test_sdk_tool_call_streaming_and_not(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        claude = client(gw)
        message = await claude.messages.create(
            model="claude-test-sonnet",
            max_tokens=64,
            messages=HI,
            tools=[WEATHER],
        )
        async with claude.messages.stream(
            model="claude-test-opus",
            max_tokens=64,
            messages=HI,
            tools=[WEATHER],
        ) as stream:
            partials = [e.partial_json async for e in stream if e.type == "input_json"]
            final = await stream.get_final_message()
        await claude.close()
    for reply in (message, final):
        block = reply.content[-1]
        assert (
            block.type == "tool_use"
            and block.name == "get_weather"
            and block.input == {"city": "Paris"}
        )
        assert reply.stop_reason == "tool_use"
    assert len(partials) > 3, "arguments arrive as the upstream streams them"
    sent = posts(openai_up)[-1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"


async def test_a_tool_result_turn_reaches_the_upstream_as_tool_messages(
    openai_up: FakeOpenAI,
) -> None:
    conversation: list[MessageParam] = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": [{"type": "text", "text": "18C"}],
                },
                {"type": "text", "text": "and now?"},
            ],
        },
    ]
    async with gateway(openai_up) as gw:
        claude = client(gw)
        reply = await claude.messages.create(
            model="chat", max_tokens=64, messages=conversation, tools=[WEATHER]
        )
        await claude.close()
    assert reply.content[0].type == "text" and reply.content[0].text == "echo: and now?"
    assert posts(openai_up)[-1].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_01",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01", "content": "18C"},
        {"role": "user", "content": "and now?"},
    ]


CLAUDE_CODE_BETAS = (
    "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14,"
    "fine-grained-tool-streaming-2025-05-14,context-management-2025-06-27"
)


def claude_code_body(model: str) -> dict[str, Any]:
    """A request shaped like Claude Code's (fields observed on the wire)."""
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {
                "type": "text",
                "text": "You are an interactive CLI tool.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                    {
                        "type": "text",
                        "text": "what's the weather?",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
            {"role": "system", "content": "A late system note."},
        ],
        "tools": [{**WEATHER, "defer_loading": True, "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": "user_0123_account_4567_session_89ab"},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "temperature": 1,
    }


async def post_raw(
    gw: RunningGateway, body: dict[str, Any], path: str = "/v1/messages?beta=true"
) -> tuple[int, dict[str, str], bytes]:
    headers = {
        "authorization": "Bearer sk-ant-oat01-abc",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": CLAUDE_CODE_BETAS,
        "x-app": "cli",
        "user-agent": "claude-cli/2.0.0 (external, cli)",
        "content-type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + path, json=body, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def test_claude_code_request_runs_on_a_local_engine(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        status, headers, stream = await post_raw(gw, claude_code_body("claude-sonnet-4-5-20250929"))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert headers["request-id"]
    events = parse_events(stream)
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    tool = next(d["content_block"] for n, d in events if n == "content_block_start")
    assert tool["type"] == "tool_use" and tool["name"] == "get_weather"
    sent = posts(openai_up)[-1].body
    assert sent["model"] == "tools"
    assert sent["messages"][0]["role"] == "system" and sent["messages"][0]["content"].endswith(
        "A late system note."
    )
    assert sent["messages"][1] == {
        "role": "user",
        "content": "<system-reminder>context</system-reminder>\n\nwhat's the weather?",
    }
    # Nothing a local engine cannot handle gets through.
    assert set(sent) == {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "temperature",
        "tools",
    }
    assert "cache_control" not in json.dumps(sent) and "defer_loading" not in json.dumps(sent)


async def test_streamed_answers_count_tokens_in_metrics(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        claude = client(gw)
        async with claude.messages.stream(model="chat", max_tokens=64, messages=HI) as stream:
            await stream.get_final_message()
        await claude.close()
        async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
            metrics = await response.text()
    assert 'turnout_tokens_total{model="chat",type="completion"} 5.0' in metrics
    assert 'turnout_requests_total{model="chat",route="messages",status="200"}' in metrics


# --- errors ------------------------------------------------------------------------------------


async def test_unknown_model_is_a_404_in_anthropics_envelope(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        claude = client(gw)
        with pytest.raises(anthropic.NotFoundError) as caught:
            await claude.messages.create(model="gpt-nope", max_tokens=8, messages=HI)
        await claude.close()
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "gpt-nope" in body["error"]["message"]
    assert caught.value.request_id


async def test_a_malformed_request_is_a_400_in_anthropics_envelope(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        status, _, body = await post_raw(
            gw, {"model": "chat", "messages": [{"role": "user", "content": 42}]}
        )
    error = json.loads(body)
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    assert "messages[0].content" in error["error"]["message"]


async def test_an_upstream_rate_limit_keeps_its_status_and_retry_after(
    openai_up: FakeOpenAI,
) -> None:
    async with gateway(openai_up) as gw:
        claude = client(gw)
        with pytest.raises(anthropic.RateLimitError) as caught:
            await claude.messages.create(model="busy", max_tokens=8, messages=HI)
        await claude.close()
    assert caught.value.response.headers["retry-after"] == "1"
    assert error_of(caught.value)["type"] == "rate_limit_error"


@pytest.mark.parametrize("model", ["broken", "cut"])
async def test_an_upstream_failing_mid_stream_ends_with_an_error_event(
    openai_up: FakeOpenAI, model: str
) -> None:
    async with gateway(openai_up) as gw:
        status, _, stream = await post_raw(
            gw, {"model": model, "max_tokens": 8, "stream": True, "messages": HI}
        )
        claude = client(gw)
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with claude.messages.stream(model=model, max_tokens=8, messages=HI) as sdk_stream:
                await sdk_stream.get_final_message()
        await claude.close()
    assert status == 200
    events = parse_events(stream)
    assert events[0][0] == "message_start" and events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    assert error_of(caught.value)["type"] == "api_error"


async def test_keepalive_is_anthropics_ping_while_the_upstream_is_slow(
    openai_up: FakeOpenAI,
) -> None:
    openai_up.first_byte_delay = 0.6
    async with gateway(openai_up, keepalive_seconds=0.2) as gw:
        status, _, stream = await post_raw(
            gw, {"model": "slow", "max_tokens": 64, "stream": True, "messages": HI}
        )
    events = parse_events(stream)
    assert status == 200 and events[0] == ("ping", {"type": "ping"})
    assert next(n for n, _ in events if n != "ping") == "message_start"


async def test_count_tokens(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        claude = client(gw)
        counted = await claude.messages.count_tokens(
            model="claude-test-sonnet", messages=HI, tools=[WEATHER]
        )
        await claude.close()
    assert counted.input_tokens > 10
    assert not posts(openai_up), "counting tokens costs no upstream call"


# --- over an Anthropic upstream: the original request, untouched ------------------------------------


async def test_claude_code_request_reaches_anthropic_as_sent(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic
) -> None:
    body = claude_code_body("cloud-thinking")
    body["messages"].append({"role": "user", "content": "more"})
    async with gateway(openai_up, anthropic_up) as gw:
        status, _, stream = await post_raw(gw, body)
    assert status == 200
    events = parse_events(stream)
    assert ("ping", {"type": "ping"}) in events, "the upstream's own events, pings included"
    kinds = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert kinds == ["thinking", "text"]
    assert any(d.get("delta", {}).get("type") == "signature_delta" for _, d in events)
    request = posts(anthropic_up)[-1]
    sent = request.body
    assert sent["model"] == "thinking"
    assert (
        sent["thinking"] == body["thinking"]
        and sent["context_management"] == body["context_management"]
    )
    assert sent["tools"] == body["tools"] and sent["metadata"] == body["metadata"]
    assert sent["system"][-1] == {"type": "text", "text": "A late system note."}
    assert [m["role"] for m in sent["messages"]] == ["user", "user"]
    assert request.headers["anthropic-beta"] == CLAUDE_CODE_BETAS
    assert request.headers["x-api-key"] == "sk-ant-test", "the provider's key, never the client's"


async def test_sdk_over_an_anthropic_upstream(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic
) -> None:
    async with gateway(openai_up, anthropic_up) as gw:
        claude = client(gw)
        message = await claude.messages.create(
            model="cloud-tools", max_tokens=64, messages=HI, tools=[WEATHER]
        )
        async with claude.messages.stream(
            model="cloud-tools", max_tokens=64, messages=HI, tools=[WEATHER]
        ) as stream:
            final = await stream.get_final_message()
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with claude.messages.stream(
                model="cloud-broken", max_tokens=64, messages=HI
            ) as broken:
                await broken.get_final_message()
        await claude.close()
        async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
            metrics = await response.text()
    for reply in (message, final):
        assert reply.content[-1].type == "tool_use" and reply.content[-1].input == {"city": "Paris"}
        assert (
            reply.usage.cache_read_input_tokens == 11
            and reply.usage.cache_creation_input_tokens == 4
        )
    assert error_of(caught.value)["type"] == "overloaded_error"
    assert 'turnout_tokens_total{model="cloud-tools",type="prompt"}' in metrics


async def test_an_anthropic_upstream_error_status_keeps_anthropics_shape(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic
) -> None:
    anthropic_up.fail_next(1, 400)
    async with gateway(openai_up, anthropic_up) as gw:
        claude = client(gw)
        with pytest.raises(anthropic.BadRequestError) as caught:
            await claude.messages.create(model="cloud", max_tokens=8, messages=HI)
        await claude.close()
    assert error_of(caught.value)["type"] == "invalid_request_error"
    assert "scripted by the fake upstream" in error_of(caught.value)["message"]


# --- a real llama-server ----------------------------------------------------------------------


@pytest.mark.engine
async def test_claude_code_style_tool_call_on_a_real_llama_server(
    llama_toolcall: LlamaServer, llama_hello: LlamaServer
) -> None:
    raw = {
        "providers": {
            "toolcall": {"kind": "llamacpp", "base_url": llama_toolcall.url + "/v1"},
            "hello": {"kind": "llamacpp", "base_url": llama_hello.url + "/v1"},
        },
        "models": [
            {
                "name": "coder",
                "patterns": ["claude-*"],
                "targets": [{"provider": "toolcall", "model": "tiny-toolcall"}],
            },
            {"name": "hello", "targets": [{"provider": "hello", "model": "tiny-hello"}]},
        ],
    }
    async with running_gateway(config_of(raw)) as gw:
        claude = client(gw)
        async with claude.messages.stream(
            model="claude-test-sonnet",
            max_tokens=64,
            system=[
                {"type": "text", "text": "You are helpful.", "cache_control": {"type": "ephemeral"}}
            ],
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=[WEATHER],
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream:
            final = await stream.get_final_message()
        hello = await claude.messages.create(model="hello", max_tokens=32, messages=HI)
        await claude.close()
    tool = final.content[-1]
    assert (
        tool.type == "tool_use" and tool.name == "get_weather" and tool.input == {"city": "Paris"}
    )
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 0
    assert hello.content[0].type == "text" and hello.content[0].text == HELLO_TEXT


async def test_disconnecting_client_cancels_the_upstream(openai_up: FakeOpenAI) -> None:
    openai_up.chunk_delay = 0.05
    async with gateway(openai_up) as gw:
        claude = client(gw)
        async with claude.messages.stream(model="chat", max_tokens=64, messages=HI) as stream:
            async for _ in stream:
                break
        await claude.close()
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
            metrics = await response.text()
    assert 'turnout_client_disconnects_total{route="messages"} 1.0' in metrics


async def test_an_upstream_failing_after_keepalives_ends_with_an_error_event(
    openai_up: FakeOpenAI,
) -> None:
    openai_up.first_byte_delay = 3.0
    raw = {
        "providers": {
            "local": {
                "kind": "openai-compatible",
                "base_url": openai_up.url,
                "local": True,
                "timeouts": {"connect": 0.2, "first_byte": 0.5},
            }
        },
        "models": [
            {"name": "slow", "targets": [{"provider": "local", "model": "slow-first-byte"}]}
        ],
        "routing": {"retries": 0},
        "server": {"keepalive_seconds": 0.15},
    }
    async with running_gateway(config_of(raw)) as gw:
        status, _, stream = await post_raw(
            gw, {"model": "slow", "max_tokens": 8, "stream": True, "messages": HI}
        )
    events = parse_events(stream)
    assert status == 200 and events[0][0] == "ping"
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "timeout_error"


async def test_a_native_request_falls_back_to_a_local_engine_translated(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic
) -> None:
    raw = {
        "providers": {
            "claude": {"kind": "anthropic", "base_url": anthropic_up.url, "api_key": "sk-ant-test"},
            "local": {"kind": "openai-compatible", "base_url": openai_up.url, "local": True},
        },
        "models": [
            {
                "name": "smart",
                "targets": [
                    {"provider": "claude", "model": "ok"},
                    {"provider": "local", "model": "ok"},
                ],
            }
        ],
        "routing": {"retries": 0},
    }
    anthropic_up.fail_next(1, 529)
    async with running_gateway(config_of(raw)) as gw:
        claude = client(gw)
        async with claude.messages.stream(
            model="smart",
            max_tokens=64,
            messages=HI,
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream:
            final = await stream.get_final_message()
        await claude.close()
    assert final.content[-1].type == "text" and final.content[-1].text == "echo: hi"
    assert "thinking" in posts(anthropic_up)[-1].body, "the first try was the original request"
    assert "thinking" not in posts(openai_up)[-1].body, "the fallback got the translation"
