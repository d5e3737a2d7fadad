"""The ``anthropic`` upstream adapter: OpenAI chat in, Anthropic's Messages API out, and back.

Pure translation first (request bodies, replies, golden event streams into OpenAI chunks),
then the official openai SDK against a real turnout in front of the fake Anthropic API, which
validates every request the way Anthropic does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from adapters.anthropic.translate import ChatChunks, chat_reply, messages_body
from gateway.errors import BadRequest, GatewayError, UpstreamStatus
from gateway.translate import raw
from tests.fakes.anthropic_upstream import FakeAnthropic, validate
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def anthropic_body(model: str = "claude-x", stream: bool = False, **fields: Any) -> dict[str, Any]:
    chat: dict[str, Any] = {"model": "alias", "messages": HI, **fields}
    translated = messages_body({k: raw(v) for k, v in chat.items()}, model, stream)
    body: dict[str, Any] = msgspec.json.decode(translated)
    validate(body)  # what the real API would reject, the fake rejects too
    return body


# --- requests ---------------------------------------------------------------------------------


def test_system_user_and_defaults() -> None:
    body = anthropic_body(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {"role": "user", "content": "hi"},
        ],
        temperature=1.7,
        top_p=0.5,
        stop="END",
        user="u-1",
    )
    assert body == {
        "model": "claude-x",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric."}],
        "temperature": 1.0,
        "top_p": 0.5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }


def test_tool_calls_and_tool_results_become_paired_blocks() -> None:
    body = anthropic_body(
        max_completion_tokens=200,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        messages=[
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "21C"}],
            },
            {"role": "user", "content": "compare"},
        ],
    )
    assert body["max_tokens"] == 200
    assert body["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],
            "description": "Current weather for a city",
        }
    ]
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": [{"type": "text", "text": "18C"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "21C"}],
                },
                {"type": "text", "text": "compare"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, None),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(
    choice: str | None, parallel: bool | None, expected: dict[str, Any] | None
) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER]}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    assert anthropic_body(**fields).get("tool_choice") == expected


def test_images_and_pdfs_become_sources() -> None:
    body = anthropic_body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AA"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {
                        "type": "file",
                        "file": {
                            "filename": "a.pdf",
                            "file_data": "data:application/pdf;base64,JVBE",
                        },
                    },
                ],
            }
        ]
    )
    assert body["messages"][0]["content"][1:] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AA"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
    ]


def test_structured_output_and_streaming() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = anthropic_body(
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert body["stream"] is True
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_reasoning_effort_turns_on_thinking_within_max_tokens_and_drops_sampling() -> None:
    body = anthropic_body(reasoning_effort="high", max_tokens=4000, temperature=0.2, top_p=0.5)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert "temperature" not in body and "top_p" not in body
    assert "thinking" not in anthropic_body(reasoning_effort="low", max_tokens=2000)
    assert "thinking" not in anthropic_body(reasoning_effort="none")
    forced = anthropic_body(
        reasoning_effort="high",
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert "thinking" not in forced
    given = {"type": "enabled", "budget_tokens": 2048}
    assert anthropic_body(thinking=given, reasoning_effort="high")["thinking"] == given


def test_thinking_blocks_sent_back_open_the_assistant_turn_unchanged() -> None:
    signed = {"type": "thinking", "thinking": "plan", "signature": "sig"}
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    unsigned = {"type": "thinking", "thinking": "local"}
    body = anthropic_body(
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "Hello.",
                "reasoning_content": "plan",
                "thinking_blocks": [signed, redacted, unsigned],
            },
            {"role": "user", "content": "and?"},
        ]
    )
    assert body["messages"][1]["content"] == [
        signed,
        redacted,
        {"type": "text", "text": "Hello."},
    ]


def test_an_untranslatable_body_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        messages_body({"messages": raw("nope")}, "m", False)


# --- replies ----------------------------------------------------------------------------------


def test_reply_with_thinking_text_tools_and_cache_usage() -> None:
    message = msgspec.json.encode(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 4,
                "cache_read_input_tokens": 30,
                "output_tokens": 9,
            },
        }
    )
    assert msgspec.json.decode(chat_reply(message, 123)) == {
        "id": "msg_1",
        "object": "chat.completion",
        "created": 123,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "hmm",
                    "thinking_blocks": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"}
                    ],
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 44,
            "completion_tokens": 9,
            "total_tokens": 53,
            "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 4},
        },
    }


# --- streams ----------------------------------------------------------------------------------


def event(name: str, data: dict[str, Any]) -> bytes:
    return (
        b"event: "
        + name.encode()
        + b"\ndata: "
        + msgspec.json.encode({"type": name, **data})
        + b"\n\n"
    )


def chunks_of(events: list[bytes]) -> list[Any]:
    translator = ChatChunks(created=1)
    out = [c for e in events for c in translator.feed(e)]
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in out)
    return [c[6:-2].decode() if c == b"data: [DONE]\n\n" else json.loads(c[6:]) for c in out]


START = event(
    "message_start",
    {
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 5,
                "output_tokens": 1,
            },
        }
    },
)


def test_golden_tool_call_stream_into_openai_chunks() -> None:
    arguments = '{"city": "Paris", "days": 3}'
    pieces = ["", *(arguments[i : i + 3] for i in range(0, len(arguments), 3))]
    chunks = chunks_of(
        [
            START,
            event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
            b'event: ping\ndata: {"type": "ping"}\n\n',
            event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "text_delta", "text": "Let me check."}},
            ),
            event("content_block_stop", {"index": 0}),
            event(
                "content_block_start",
                {
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {},
                    },
                },
            ),
            *(
                event(
                    "content_block_delta",
                    {"index": 1, "delta": {"type": "input_json_delta", "partial_json": p}},
                )
                for p in pieces
            ),
            event("content_block_stop", {"index": 1}),
            event(
                "message_delta",
                {
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": 20},
                },
            ),
            event("message_stop", {}),
        ]
    )
    envelope = {"id": "msg_1", "object": "chat.completion.chunk", "created": 1, "model": "claude-x"}
    assert chunks[0] == {
        **envelope,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-3]]
    assert deltas[0] == {"content": "Let me check."}
    assert deltas[1] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:]]
    assert fragments == pieces[1:] and len(fragments) > 5
    assert chunks[-3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert chunks[-2] == {
        **envelope,
        "choices": [],
        "usage": {
            "prompt_tokens": 17,
            "completion_tokens": 20,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
        },
    }
    assert chunks[-1] == "[DONE]"


def test_parallel_tool_blocks_get_consecutive_tool_call_indexes() -> None:
    blocks = []
    for index, (call, city) in enumerate([("a", "Paris"), ("b", "Rome")]):
        blocks += [
            event(
                "content_block_start",
                {
                    "index": index,
                    "content_block": {"type": "tool_use", "id": call, "name": "w", "input": {}},
                },
            ),
            event(
                "content_block_delta",
                {
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": f'{{"city":"{city}"}}'},
                },
            ),
            event("content_block_stop", {"index": index}),
        ]
    chunks = chunks_of(
        [
            START,
            *blocks,
            event(
                "message_delta",
                {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
            ),
        ]
    )
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
    assert [c["index"] for c in calls] == [0, 0, 1, 1]


def test_thinking_streams_as_reasoning_content_then_whole_with_its_signature() -> None:
    chunks = chunks_of(
        [
            START,
            event(
                "content_block_start",
                {
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                },
            ),
            event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
            ),
            event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
            ),
        ]
    )
    assert [c["choices"][0]["delta"] for c in chunks[1:]] == [
        {"reasoning_content": "hmm"},
        {"thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}]},
    ]


def test_an_error_event_raises_the_status_it_stands_for() -> None:
    translator = ChatChunks(created=1)
    translator.feed(START)
    with pytest.raises(UpstreamStatus) as caught:
        translator.feed(
            b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
        )
    assert caught.value.upstream_status == 529 and "Overloaded" in caught.value.message


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.builds(
                lambda name, data: (
                    b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"
                ),
                st.sampled_from(
                    [
                        "message_start",
                        "content_block_start",
                        "content_block_delta",
                        "message_delta",
                        "error",
                        "ping",
                    ]
                ),
                st.dictionaries(
                    st.sampled_from(
                        ["type", "index", "delta", "message", "content_block", "usage"]
                    ),
                    st.none()
                    | st.integers()
                    | st.text(max_size=4)
                    | st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
                ),
            ),
        ),
        max_size=10,
    )
)
def test_any_upstream_event_yields_chunks_or_a_gateway_error(events: list[bytes]) -> None:
    translator = ChatChunks(created=1)
    try:
        for e in events:
            for out in translator.feed(e):
                assert out.startswith(b"data: ") and out.endswith(b"\n\n")
    except GatewayError:
        pass


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="sk-ant-test", cache_read=6, cache_creation=2) as upstream:
        yield upstream


def gateway(
    claude: FakeAnthropic, *extra_targets: dict[str, Any], **providers: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    raw_config = {
        "providers": {
            "claude": {
                "kind": "anthropic",
                "base_url": claude.url + "/v1",
                "api_key": "sk-ant-test",
            },
            **providers,
        },
        "models": [
            {"name": "sonnet", "targets": [{"provider": "claude", "model": "ok"}]},
            {"name": "tools", "targets": [{"provider": "claude", "model": "tools"}]},
            {"name": "broken", "targets": [{"provider": "claude", "model": "error-mid-stream"}]},
            {
                "name": "fallback",
                "targets": [{"provider": "claude", "model": "ok"}, *extra_targets],
            },
        ],
        "routing": {"retries": 0},
    }
    return running_gateway(config_of(raw_config))


def posts(upstream: FakeAnthropic | FakeOpenAI) -> list[Any]:
    return [r for r in upstream.requests if r.method == "POST"]


async def test_text_streaming_and_not_with_cache_usage(claude: FakeAnthropic) -> None:
    async with gateway(claude) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(
            model="sonnet",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello"},
            ],
        )
        stream = await client.chat.completions.create(
            model="sonnet", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert (
        reply.choices[0].message.content == "echo: hello"
        and reply.choices[0].finish_reason == "stop"
    )
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2 + 6 + 1
    request = posts(claude)[0]
    assert request.path == "/v1/messages"
    assert (
        request.headers["x-api-key"] == "sk-ant-test"
        and request.headers["anthropic-version"] == "2023-06-01"
    )
    assert (
        request.body["system"] == [{"type": "text", "text": "Be brief."}]
        and request.body["model"] == "ok"
    )


async def test_streamed_tool_call_arrives_whole_and_a_result_turn_is_accepted(
    claude: FakeAnthropic,
) -> None:
    claude.tool_calls = [("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"Rome"}')]
    async with gateway(claude) as gw:
        client = gw.openai()
        stream = await client.chat.completions.create(
            model="tools", messages=HI, tools=[WEATHER], stream=True
        )
        calls: dict[int, dict[str, str]] = {}
        finish = None
        fragments = 0
        async for chunk in stream:
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] += call.id or ""
                    entry["name"] += call.function.name or "" if call.function else ""
                    entry["arguments"] += call.function.arguments or "" if call.function else ""
                    fragments += 1
                finish = choice.finish_reason or finish
        assert finish == "tool_calls" and fragments > 6
        assert [json.loads(c["arguments"]) for c in calls.values()] == [
            {"city": "Paris"},
            {"city": "Rome"},
        ]
        # The next turn: the fake rejects any tool_result that does not pair with a tool_use.
        claude.tool_calls = None
        history: list[Any] = [
            *HI,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in calls.values()
                ],
            },
            *(
                {"role": "tool", "tool_call_id": c["id"], "content": "sunny"}
                for c in calls.values()
            ),
        ]
        reply = await client.chat.completions.create(
            model="sonnet", messages=history, tools=[WEATHER]
        )
    assert reply.choices[0].finish_reason == "stop"


async def test_error_statuses_keep_their_meaning(claude: FakeAnthropic) -> None:
    async with gateway(claude) as gw:
        client = gw.openai()
        claude.fail_next(1, 429)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="sonnet", messages=HI)
        claude.fail_next(1, 400)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="sonnet", messages=HI)
        assert "scripted by the fake upstream" in caught.value.message


async def test_overloaded_anthropic_falls_back_to_the_next_target(claude: FakeAnthropic) -> None:
    async with FakeOpenAI() as local:
        target = {"provider": "local", "model": "ok"}
        async with gateway(
            claude, target, local={"kind": "openai", "base_url": local.url, "local": True}
        ) as gw:
            claude.fail_next(1, 529)
            reply = await gw.openai().chat.completions.with_raw_response.create(
                model="fallback", messages=HI
            )
    assert (
        reply.headers["x-turnout-target"] == "local/ok"
        and reply.headers["x-turnout-attempts"] == "2"
    )


async def test_an_error_event_mid_stream_reaches_the_client_in_band(claude: FakeAnthropic) -> None:
    async with gateway(claude) as gw:
        stream = await gw.openai().chat.completions.create(model="broken", messages=HI, stream=True)
        with pytest.raises(openai.APIError, match="Overloaded"):
            async for _ in stream:
                pass


async def test_a_request_the_api_would_reject_is_reported_not_hidden(claude: FakeAnthropic) -> None:
    async with gateway(claude) as gw:
        with pytest.raises(openai.BadRequestError) as caught:
            # A tool result with no tool call before it: Anthropic's 400, relayed.
            await gw.openai().chat.completions.create(
                model="sonnet",
                messages=[*HI, {"role": "tool", "tool_call_id": "nope", "content": "x"}],
            )
    assert "tool_use_id" in caught.value.message


async def test_a_local_anthropic_server_is_probed_on_its_models_endpoint(
    claude: FakeAnthropic,
) -> None:
    # 127.0.0.1 is local: the gateway asks the server itself (a cloud API is not probed).
    async with gateway(claude):
        pass
    probe = next(r for r in claude.requests if r.method == "GET")
    assert probe.path == "/v1/models" and probe.headers["x-api-key"] == "sk-ant-test"
