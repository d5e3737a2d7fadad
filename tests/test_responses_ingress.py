"""``POST /v1/responses`` end to end: the official openai SDK (and Codex-shaped raw requests)
against a real turnout, over a fake OpenAI upstream, a fake Anthropic upstream, and a real
llama-server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.responses import FunctionToolParam

from tests.engines.engines import LlamaServer
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

SHELL: FunctionToolParam = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command and returns its output.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}}},
        "required": ["command"],
    },
}
# Without "strict", as clients send it; the SDK's type requires the key, hence the cast.
WEATHER = cast(
    FunctionToolParam,
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
)


@pytest.fixture
async def openai_up() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=5) as upstream:
        yield upstream


def gateway(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic | None = None, **server: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    providers: dict[str, Any] = {
        "local": {"kind": "openai", "base_url": openai_up.url, "local": True}
    }
    models: list[dict[str, Any]] = [
        {
            "name": "coder",
            "patterns": ["gpt-5*"],
            "targets": [{"provider": "local", "model": "tools"}],
        },
        {"name": "chat", "targets": [{"provider": "local", "model": "ok"}]},
        {"name": "broken", "targets": [{"provider": "local", "model": "error-mid-stream"}]},
        {"name": "down", "targets": [{"provider": "local", "model": "error-503"}]},
    ]
    if anthropic_up is not None:
        providers["claude"] = {"kind": "anthropic", "base_url": anthropic_up.url, "api_key": "k"}
        models.append(
            {"name": "claude-tools", "targets": [{"provider": "claude", "model": "tools"}]}
        )
    raw = {"providers": providers, "models": models, "routing": {"retries": 0}, "server": server}
    return running_gateway(config_of(raw))


def posts(upstream: FakeOpenAI | FakeAnthropic) -> list[Any]:
    return [r for r in upstream.requests if r.method == "POST"]


async def test_text_reply_streaming_and_not(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        client = gw.openai()
        response = await client.responses.create(
            model="chat", input="hello", instructions="Be brief."
        )
        async with client.responses.stream(model="chat", input="hello") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    assert response.output_text == "echo: hello" and response.status == "completed"
    assert response.usage is not None and response.usage.total_tokens > 0
    assert response.instructions == "Be brief."
    assert "".join(deltas) == "echo: hello" and len(deltas) > 1
    assert final.output_text == "echo: hello" and final.usage is not None
    sent = posts(openai_up)[0].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]


async def test_function_call_streaming_and_not(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        client = gw.openai()
        response = await client.responses.create(
            model="gpt-5-codex", input="weather?", tools=[WEATHER]
        )
        async with client.responses.stream(
            model="gpt-5.1", input="weather?", tools=[WEATHER]
        ) as stream:
            deltas = [
                e.delta async for e in stream if e.type == "response.function_call_arguments.delta"
            ]
            final = await stream.get_final_response()
    for reply in (response, final):
        call = reply.output[-1]
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    assert len(deltas) > 3, "arguments arrive as the upstream streams them"


async def test_parallel_calls_and_their_outputs_round_trip(openai_up: FakeOpenAI) -> None:
    openai_up.tool_calls = [("shell", '{"command":["ls"]}'), ("shell", '{"command":["pwd"]}')]
    async with gateway(openai_up) as gw:
        client = gw.openai()
        first = await client.responses.create(model="gpt-5", input="look around", tools=[SHELL])
        calls = [o for o in first.output if o.type == "function_call"]
        assert [json.loads(c.arguments)["command"] for c in calls] == [["ls"], ["pwd"]]
        openai_up.tool_calls = None
        history: list[Any] = [{"role": "user", "content": "look around"}]
        history += [
            {
                "type": "function_call",
                "call_id": c.call_id,
                "name": c.name,
                "arguments": c.arguments,
            }
            for c in calls
        ]
        history += [
            {"type": "function_call_output", "call_id": c.call_id, "output": f"out {i}"}
            for i, c in enumerate(calls)
        ]
        await client.responses.create(model="chat", input=history, tools=[SHELL], store=False)
    messages = posts(openai_up)[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == [c.call_id for c in calls]
    assert [m["tool_call_id"] for m in messages[2:]] == [c.call_id for c in calls]


async def test_codex_shaped_request(openai_up: FakeOpenAI) -> None:
    body = {
        "model": "gpt-5-codex",
        "instructions": "You are Codex, based on GPT-5.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "<permissions>"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "<environment_context>"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "fix the bug"}],
            },
        ],
        "tools": [
            SHELL,
            {
                "type": "custom",
                "name": "apply_patch",
                "description": "Edit files",
                "format": {
                    "type": "grammar",
                    "syntax": "lark",
                    "definition": "start: begin_patch hunk+ end_patch",
                },
            },
            {
                "type": "namespace",
                "name": "mcp__github__",
                "description": "GitHub tools",
                "tools": [
                    {
                        "type": "function",
                        "name": "create_issue",
                        "parameters": {"type": "object", "properties": {}},
                    }
                ],
            },
            {"type": "web_search"},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199-session",
    }
    async with gateway(openai_up) as gw, aiohttp.ClientSession() as session:
        headers = {
            "authorization": "Bearer sk-x",
            "originator": "codex_cli_rs",
            "session_id": "0199",
        }
        async with session.post(gw.v1 + "/responses", json=body, headers=headers) as response:
            status, raw_stream = response.status, await response.read()
    assert status == 200
    events = [
        json.loads(line[6:]) for line in raw_stream.split(b"\n") if line.startswith(b"data: ")
    ]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    # Codex runs the items of output_item.done, and needs response.completed to end the turn.
    assert done[-1]["type"] == "function_call" and done[-1]["name"] == "shell"
    assert events[-1]["type"] == "response.completed"
    sent = posts(openai_up)[-1].body
    assert [t["function"]["name"] for t in sent["tools"]] == [
        "shell",
        "apply_patch",
        "mcp__github__create_issue",
    ]
    assert sent["messages"][0] == {
        "role": "system",
        "content": "You are Codex, based on GPT-5.\n\n<permissions>",
    }
    assert sent["parallel_tool_calls"] is False
    # Chat completions knows these too (README: "Request fields").
    assert sent["prompt_cache_key"] == "0199-session" and sent["reasoning_effort"] == "medium"
    for field in ("store", "include", "reasoning", "instructions", "input"):
        assert field not in sent


async def test_an_unknown_previous_response_id_is_a_404_naming_the_field(
    openai_up: FakeOpenAI,
) -> None:
    # Stored conversations are tested in tests/test_responses_store.py.
    async with gateway(openai_up) as gw:
        with pytest.raises(openai.NotFoundError) as caught:
            await gw.openai().responses.create(
                model="chat", input="hi", previous_response_id="resp_1"
            )
    assert "resp_1" in caught.value.message
    assert caught.value.param == "previous_response_id"


async def test_unknown_model_is_openais_404(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        with pytest.raises(openai.NotFoundError) as caught:
            await gw.openai().responses.create(model="nope", input="hi")
    assert caught.value.code == "model_not_found"


async def test_upstream_error_before_the_stream_is_an_http_error(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.openai().responses.create(model="down", input="hi", stream=True)
    assert caught.value.status_code == 502


async def test_upstream_error_mid_stream_is_response_failed(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        stream = await gw.openai().responses.create(model="broken", input="hi", stream=True)
        events = [e async for e in stream]
    assert events[0].type == "response.created"
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.error is not None
    assert "mid-stream" in failed.response.error.message


async def test_keepalive_is_an_sse_comment(openai_up: FakeOpenAI) -> None:
    openai_up.first_byte_delay = 0.5
    openai_up.scenario = "slow-first-byte"
    async with gateway(openai_up, keepalive_seconds=0.2) as gw, aiohttp.ClientSession() as session:
        async with session.post(
            gw.v1 + "/responses", json={"model": "chat", "input": "hi", "stream": True}
        ) as response:
            raw_stream = await response.read()
    assert raw_stream.startswith(b": keepalive\n\n")
    assert b"event: response.completed" in raw_stream


async def test_responses_over_an_anthropic_upstream(openai_up: FakeOpenAI) -> None:
    async with FakeAnthropic(cache_read=7) as claude, gateway(openai_up, claude) as gw:
        client = gw.openai()
        async with client.responses.stream(
            model="claude-tools", input="weather?", tools=[WEATHER]
        ) as stream:
            final = await stream.get_final_response()
        sent = posts(claude)[-1].body
    assert [o.type for o in final.output] == ["message", "function_call"]
    message, call = final.output
    assert message.type == "message" and message.content[0].type == "output_text"
    assert message.content[0].text == "Let me check."
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 7
    assert sent["tools"][0]["name"] == "get_weather" and sent["max_tokens"] > 0


@pytest.mark.engine
async def test_codex_style_tool_call_on_a_real_llama_server(llama_toolcall: LlamaServer) -> None:
    raw = {
        "providers": {"toolcall": {"kind": "llamacpp", "base_url": llama_toolcall.url + "/v1"}},
        "models": [
            {
                "name": "coder",
                "patterns": ["gpt-5*"],
                "targets": [{"provider": "toolcall", "model": "tiny-toolcall"}],
            }
        ],
    }
    async with running_gateway(config_of(raw)) as gw:
        client: AsyncOpenAI = gw.openai()
        async with client.responses.stream(
            model="gpt-5-codex",
            instructions="You are a coding agent.",
            input=[
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": "weather in Paris?"},
            ],
            tools=[WEATHER],
            max_output_tokens=64,
            store=False,
        ) as stream:
            final = await stream.get_final_response()
    call = final.output[-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
