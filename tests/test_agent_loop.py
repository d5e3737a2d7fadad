"""The server-side agent loop, over a real gateway's forwarder: fake upstreams scripted per call,
and a real llama-server whose tiny model always calls get_weather(city="Paris").

The loop is reached the way the ingress reaches it, through the plugins' ``forwarder_for``;
the tests that go through ``/v1/chat/completions`` need the ingress to use it (see the skip
reason).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import anthropic
import msgspec
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from adapters.base import Operation
from gateway.errors import Forbidden
from gateway.forwarder import Trace
from gateway.identity import Identity
from gateway.plugins.context import Forwarding
from gateway.state import GatewayState
from gateway.wire import decode_request
from tests.engines.engines import LlamaServer
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

FUNCTIONS = "tests.tools_fixtures.functions"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER: ChatCompletionFunctionToolParam = {"type": "function", "function": {"name": "get_weather"}}
READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file on the client's machine.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    },
}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "weather in Paris?"}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": "weather in Paris?"}]
SOFIA = Identity(key_id=None, agent_id="agent:sofia")


def tools_section(**agent: Any) -> dict[str, Any]:
    return {
        "registry": [
            {
                "id": "get_weather",
                "description": "Current weather for a city.",
                "executor": "python",
                "target": f"{FUNCTIONS}:get_weather",
                "input_schema": CITY,
            },
            {
                "id": "payroll",
                "executor": "python",
                "target": f"{FUNCTIONS}:whoami",
                "allowed_agents": ["agent:cfo"],
            },
        ],
        "agent": {"max_tool_rounds": 2, **agent},
    }


def gateway_for(
    upstream_url: str, kind: str = "openai", model: str = "ok", **agent: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    raw = {
        "providers": {"up": {"kind": kind, "base_url": upstream_url, "local": True}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": model}]}],
        "routing": {"retries": 0},
        "plugins": {"enabled": ["tools"]},
        "tools": tools_section(**agent),
    }
    return running_gateway(config_of(raw))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def state_of(gw: RunningGateway) -> GatewayState:
    state: GatewayState = gw.app.state["gateway"]
    return state


def agent_forwarder(
    state: GatewayState, identity: Identity, request_id: str, model: Any, request: Any
) -> Forwarding | None:
    """What the ingress asks the plugins (the tools plugin's ``forwarder_for`` answers)."""
    return state.plugins.forwarder_for(state.forwarder, identity, request_id, model, request)


async def run_loop(
    gw: RunningGateway, body: dict[str, Any], identity: Identity = SOFIA, stream: bool = False
) -> tuple[Any, Trace]:
    """What the ingress does: plan, then send through the agent forwarder."""
    state = state_of(gw)
    request = decode_request(Operation.CHAT, msgspec.json.encode({"model": "chat", **body}))
    model = state.models.resolve(request.model)
    assert model is not None
    forwarder = agent_forwarder(state, identity, "req-1", model, request)
    assert forwarder is not None, "expected turnout to run tools for this request"
    trace = Trace()
    if stream:
        opened = await forwarder.open_stream(model, request, "req-1", trace)
        events = [opened.first, *[e async for e in opened.events]]
        await opened.aclose()
        return events, trace
    reply = await forwarder.send(model, request, "req-1", trace)
    assert reply.status == 200
    return json.loads(reply.body), trace


def posts(fake: FakeOpenAI) -> list[Any]:
    return [r.body for r in fake.requests if r.method == "POST"]


# --- scripted upstream ----------------------------------------------------------------------


async def test_a_registered_tool_runs_server_side_and_the_model_answers(fake: FakeOpenAI) -> None:
    fake.script = ["tools", "ok"]
    async with gateway_for(fake.url) as gw:
        reply, trace = await run_loop(gw, {"messages": USER, "tools": [WEATHER]})
    assert reply["choices"][0]["message"]["content"] == "echo: weather in Paris?"
    assert reply["choices"][0]["finish_reason"] == "stop"
    [result] = reply["turnout"]["tool_results"]
    assert result["tool"] == "get_weather" and result["ok"] is True
    assert result["arguments"] == {"city": "Paris"}
    assert result["result"]["temperature_c"] == 21
    assert reply["turnout"]["tool_rounds"] == 1 and "trace" not in reply["turnout"]
    first, second = posts(fake)
    assert first["tools"][0]["function"]["parameters"] == CITY
    assert "stream" not in first and "turnout" not in first
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tool["role"] == "tool" and tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert json.loads(tool["content"])["city"] == "Paris"
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    # Two model calls, one attempt: nothing failed over.
    assert trace.attempts == 1 and trace.target is not None


async def test_a_loop_that_never_failed_over_sends_no_attempts_header(fake: FakeOpenAI) -> None:
    """x-turnout-attempts counts fail-overs; the loop's second model call is not one."""
    fake.script = ["tools", "ok"]
    async with gateway_for(fake.url) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="chat", messages=USER, tools=[WEATHER]
        )
    assert raw.parse().choices[0].message.content == "echo: weather in Paris?"
    assert len(posts(fake)) == 2
    assert raw.headers.get("x-turnout-attempts") is None


async def test_a_round_that_failed_over_adds_one_attempt(fake: FakeOpenAI) -> None:
    fake.script = ["tools", "error-500", "ok"]  # the second round's first call fails once
    raw_config = {
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
        "routing": {"retries": 1, "backoff_seconds": 0.01},
        "plugins": {"enabled": ["tools"]},
        "tools": tools_section(),
    }
    async with running_gateway(config_of(raw_config)) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="chat", messages=USER, tools=[WEATHER]
        )
    assert raw.parse().choices[0].message.content == "echo: weather in Paris?"
    assert len(posts(fake)) == 3
    assert raw.headers.get("x-turnout-attempts") == "2"


async def test_the_loop_is_bounded_and_forces_a_final_answer(fake: FakeOpenAI) -> None:
    fake.scenario = "tools"  # a model that never stops calling tools, and ignores "none"
    async with gateway_for(fake.url) as gw:
        reply, trace = await run_loop(
            gw, {"messages": USER, "tools": [WEATHER], "turnout": {"debug": True}}
        )
    sent = posts(fake)
    assert len(sent) == 3 and trace.attempts == 1
    assert "tool_choice" not in sent[0] and sent[2]["tool_choice"] == "none"
    assert sent[2]["messages"][-1]["role"] == "user"
    assert sent[2]["messages"][-1]["content"].startswith("Do not call any more tools.")
    assert "Do not call" not in json.dumps(sent[1]["messages"])
    message = reply["choices"][0]["message"]
    assert "tool_calls" not in message and reply["choices"][0]["finish_reason"] == "stop"
    assert reply["turnout"]["tool_rounds"] == 2
    phases = [step["phase"] for step in reply["turnout"]["trace"]]
    assert phases == ["tools", "tool", "tools", "tool", "final"]


async def test_client_tools_go_back_to_the_client(fake: FakeOpenAI) -> None:
    fake.script = ["tools"]
    fake.tool_calls = [("read_file", '{"path":"notes.txt"}')]
    async with gateway_for(fake.url) as gw:
        reply, _ = await run_loop(gw, {"messages": USER, "tools": [READ_FILE, WEATHER]})
    [sent] = posts(fake)
    assert sent["tools"][0] == READ_FILE, "the client's definition passes through untouched"
    assert sent["tools"][1]["function"]["name"] == "get_weather"
    [call] = reply["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "read_file", "arguments": '{"path":"notes.txt"}'}
    assert reply["choices"][0]["finish_reason"] == "tool_calls"
    assert reply["turnout"]["tool_results"] == []


async def test_mixed_calls_return_only_the_clients_and_run_nothing(fake: FakeOpenAI) -> None:
    fake.script = ["tools"]
    fake.tool_calls = [("get_weather", '{"city":"Paris"}'), ("read_file", '{"path":"a"}')]
    async with gateway_for(fake.url) as gw:
        reply, _ = await run_loop(gw, {"messages": USER, "tools": [READ_FILE, WEATHER]})
    calls = reply["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["read_file"]
    assert reply["turnout"]["tool_results"] == []


async def test_bad_arguments_and_unknown_tools_go_back_to_the_model(fake: FakeOpenAI) -> None:
    fake.script = ["tools", "ok"]
    fake.tool_calls = [("get_weather", '{"town":"Paris"}'), ("launch_missiles", "{}")]
    async with gateway_for(fake.url) as gw:
        reply, _ = await run_loop(gw, {"messages": USER, "tools": [WEATHER]})
    bad, unknown = reply["turnout"]["tool_results"]
    assert (bad["ok"], bad["code"]) == (False, "invalid_arguments")
    assert (unknown["ok"], unknown["code"]) == (False, "not_found")
    tool_messages = [m for m in posts(fake)[1]["messages"] if m["role"] == "tool"]
    assert "'city' is a required property" in json.loads(tool_messages[0]["content"])["error"]
    assert reply["choices"][0]["message"]["content"] == "echo: weather in Paris?"


async def test_a_tool_the_agent_may_not_use_is_refused_before_the_model_is_called(
    fake: FakeOpenAI,
) -> None:
    payroll = {"type": "function", "function": {"name": "payroll"}}
    async with gateway_for(fake.url) as gw:
        with pytest.raises(Forbidden, match="may not use tool 'payroll'"):
            await run_loop(gw, {"messages": USER, "tools": [payroll]})
        cfo = Identity(key_id=None, agent_id="agent:cfo")
        fake.script = ["tools", "ok"]
        fake.tool_calls = [("payroll", "{}")]
        reply, _ = await run_loop(gw, {"messages": USER, "tools": [payroll]}, identity=cfo)
    assert reply["turnout"]["tool_results"][0]["result"]["agent_id"] == "agent:cfo"


async def test_a_route_option_runs_tools_for_requests_that_name_none(fake: FakeOpenAI) -> None:
    fake.script = ["tools", "ok"]
    async with gateway_for(fake.url, routes={"chat": ["get_weather"]}) as gw:
        reply, _ = await run_loop(gw, {"messages": USER})
    assert reply["turnout"]["tool_results"][0]["tool"] == "get_weather"


def content_of(chunks: list[dict[str, Any]]) -> list[str]:
    return [
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"].get("content")
    ]


async def test_a_streamed_request_gets_the_final_answer_as_the_model_writes_it(
    fake: FakeOpenAI,
) -> None:
    fake.script = ["tools", "ok", "tools", "ok"]
    fake.stream_chunks = 5
    body = {"messages": USER, "tools": [WEATHER], "stream": True}
    async with gateway_for(fake.url) as gw:
        events, trace = await run_loop(gw, body, stream=True)
        whole, _ = await run_loop(gw, {"messages": USER, "tools": [WEATHER]})
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # The upstream's own five text chunks, not one chunk made of the whole answer.
    texts = content_of(chunks)
    assert len(texts) == 5 and "".join(texts) == "echo: weather in Paris?"
    finish, usage = chunks[-2:]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["turnout"]["tool_results"][0]["ok"] is True
    # Both rounds' tokens, as the same loop without streaming counts them.
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    stream_posts = posts(fake)[:2]
    assert all(p["stream"] is True and p["stream_options"]["include_usage"] for p in stream_posts)
    assert trace.attempts == 1


async def test_the_answer_reaches_the_client_before_the_upstream_has_finished(
    fake: FakeOpenAI,
) -> None:
    """The last round is relayed as it streams: this upstream stalls after a few chunks of its
    answer, and the client has those chunks while it is still stalled. A client that then
    leaves closes the upstream call."""
    fake.script = ["tools", "stall-mid-stream"]
    fake.stream_chunks = 5
    fake.mid_stream_after = 4  # the role chunk and three text chunks, then silence until stop()
    async with gateway_for(fake.url) as gw:
        stream = await gw.openai().chat.completions.create(
            model="chat", messages=USER, tools=[WEATHER], stream=True
        )
        texts: list[str] = []

        async def read_three() -> None:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    texts.append(chunk.choices[0].delta.content)
                    if len(texts) == 3:
                        return

        await asyncio.wait_for(read_three(), 30)
        book = state_of(gw).book
        assert sum(view.inflight for view in book.values()) == 1, "the last round, stalled"
        # The client leaves: the round being read is closed, and its target given back.
        await stream.close()
        for _ in range(200):
            if sum(view.inflight for view in book.values()) == 0:
                break
            await asyncio.sleep(0.05)
        assert sum(view.inflight for view in book.values()) == 0
    assert len(texts) == 3 and "echo: weather in Paris?".startswith("".join(texts))


async def test_a_streamed_loop_is_one_usage_row_with_every_rounds_tokens(
    fake: FakeOpenAI,
) -> None:
    fake.script = ["tools", "ok"]
    fake.stream_chunks = 5
    fake.chunk_delay = 0.02
    async with gateway_for(fake.url) as gw:
        database = gw.config.server.database
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="chat",
            messages=USER,
            tools=[WEATHER],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in raw.parse()]
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 5 and "".join(texts) == "echo: weather in Paris?"
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 0
    assert raw.headers.get("x-turnout-attempts") is None
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT status, stream, prompt_tokens, completion_tokens FROM usage"
        ).fetchall()
    assert rows == [(200, 1, usage.prompt_tokens, usage.completion_tokens)]


async def test_a_streamed_round_that_failed_over_adds_one_attempt(fake: FakeOpenAI) -> None:
    fake.script = ["tools", "error-500", "ok"]
    raw_config = {
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
        "routing": {"retries": 1, "backoff_seconds": 0.01},
        "plugins": {"enabled": ["tools"]},
        "tools": tools_section(),
    }
    async with running_gateway(config_of(raw_config)) as gw:
        raw = await gw.openai().chat.completions.with_raw_response.create(
            model="chat", messages=USER, tools=[WEATHER], stream=True
        )
        texts = [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]
    assert "".join(texts) == "echo: weather in Paris?"
    assert raw.headers.get("x-turnout-attempts") == "2"


async def test_a_streamed_loop_is_bounded_too(fake: FakeOpenAI) -> None:
    fake.scenario = "tools"  # never stops calling tools, and ignores "none"
    body = {"messages": USER, "tools": [WEATHER], "stream": True}
    async with gateway_for(fake.url) as gw:
        events, trace = await run_loop(gw, body, stream=True)
    sent = posts(fake)
    assert len(sent) == 3 and sent[2]["tool_choice"] == "none" and trace.attempts == 1
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert not any(c["choices"] and "tool_calls" in c["choices"][0]["delta"] for c in chunks)
    role, finish, usage = chunks
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["turnout"]["tool_rounds"] == 2 and usage["usage"]["prompt_tokens"] > 0


async def test_streamed_client_tools_go_back_to_the_client(fake: FakeOpenAI) -> None:
    fake.script = ["tools"]
    fake.tool_calls = [("get_weather", '{"city":"Paris"}'), ("read_file", '{"path":"a"}')]
    body = {"messages": USER, "tools": [READ_FILE, WEATHER], "stream": True}
    async with gateway_for(fake.url) as gw:
        events, _ = await run_loop(gw, body, stream=True)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    calls = [
        call
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert [(c["index"], c["function"]) for c in calls] == [
        (0, {"name": "read_file", "arguments": '{"path":"a"}'})
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["turnout"]["tool_results"] == []


async def test_streamed_loop_for_an_anthropic_client(fake: FakeOpenAI) -> None:
    fake.script = ["tools", "ok"]
    fake.stream_chunks = 5
    async with gateway_for(fake.url, routes={"chat": ["get_weather"]}) as gw:
        claude = anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
        stream = await claude.messages.create(
            model="chat", max_tokens=64, messages=CLAUDE_USER, stream=True
        )
        deltas = [
            e.delta.text
            async for e in stream
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        ]
        await claude.close()
    assert len(deltas) == 5 and "".join(deltas) == "echo: weather in Paris?"


async def test_plain_requests_are_left_to_the_normal_path(fake: FakeOpenAI) -> None:
    async with gateway_for(fake.url) as gw:
        state = state_of(gw)
        model = state.models.resolve("chat")
        assert model is not None
        for body in ({"messages": USER}, {"messages": USER, "tools": [READ_FILE]}):
            request = decode_request(Operation.CHAT, msgspec.json.encode({"model": "chat", **body}))
            assert agent_forwarder(state, SOFIA, "r", model, request) is None


# --- through the HTTP API ---------------------------------------------------------------------


async def test_the_chat_endpoint_runs_the_loop(fake: FakeOpenAI) -> None:
    fake.script = ["tools", "ok", "tools", "ok"]
    async with gateway_for(fake.url) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(
            model="chat",
            messages=USER,
            tools=[WEATHER],
        )
        assert reply.choices[0].message.content == "echo: weather in Paris?"
        assert reply.model_extra is not None
        assert reply.model_extra["turnout"]["tool_results"][0]["ok"] is True
        stream = await client.chat.completions.create(
            model="chat",
            messages=USER,
            tools=[WEATHER],
            stream=True,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "echo: weather in Paris?"


async def test_anthropic_clients_get_route_tools(fake: FakeOpenAI) -> None:
    fake.script = ["tools", "ok"]
    async with gateway_for(fake.url, routes={"chat": ["get_weather"]}) as gw:
        claude = anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
        reply = await claude.messages.create(model="chat", max_tokens=64, messages=CLAUDE_USER)
        await claude.close()
    assert reply.content[0].type == "text" and reply.content[0].text == "echo: weather in Paris?"
    assert len(posts(fake)) == 2


# --- a real llama-server --------------------------------------------------------------------


@pytest.mark.engine
async def test_end_to_end_on_a_real_llama_server(llama_toolcall: LlamaServer) -> None:
    """Round 1: the model calls get_weather, turnout runs it; round 2 is forced
    (tool_choice none): the scripted model can only answer with text."""
    async with gateway_for(
        llama_toolcall.url + "/v1", kind="llamacpp", model="tiny-toolcall", max_tool_rounds=1
    ) as gw:
        reply, trace = await run_loop(
            gw,
            {"messages": USER, "tools": [WEATHER], "max_tokens": 64, "turnout": {"debug": True}},
        )
    steps = reply["turnout"]["trace"]
    assert [s["phase"] for s in steps] == ["tools", "tool", "final"]
    assert steps[0]["tool_calls"] == 1 and steps[1]["ok"] is True
    [result] = reply["turnout"]["tool_results"]
    assert result["arguments"] == {"city": "Paris"}
    assert result["result"]["city"] == "Paris" and result["result"]["temperature_c"] == 21
    message = reply["choices"][0]["message"]
    assert "tool_calls" not in message and "get_weather" in message["content"]
    assert reply["usage"]["prompt_tokens"] > 0 and trace.attempts == 1


@pytest.mark.engine
async def test_streamed_end_to_end_on_a_real_llama_server(llama_toolcall: LlamaServer) -> None:
    """The same loop streamed: llama-server's tool-call deltas are put together by the loop,
    and the forced final round reaches the client as llama-server streams it."""
    async with gateway_for(
        llama_toolcall.url + "/v1", kind="llamacpp", model="tiny-toolcall", max_tool_rounds=1
    ) as gw:
        body = {"messages": USER, "tools": [WEATHER], "max_tokens": 64, "stream": True}
        events, trace = await run_loop(gw, body, stream=True)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    [result] = chunks[-2]["turnout"]["tool_results"]
    assert result["arguments"] == {"city": "Paris"} and result["ok"] is True
    texts = content_of(chunks)
    assert len(texts) > 1 and "get_weather" in "".join(texts)
    assert chunks[-1]["usage"]["prompt_tokens"] > 0 and trace.attempts == 1
