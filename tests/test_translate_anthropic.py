"""Anthropic Messages ⇄ OpenAI chat on the ingress side, as pure functions: no sockets.

Golden transcripts feed OpenAI chunk streams (as OpenAI, llama.cpp and MLX send them) through
``MessageStream`` and check the exact Anthropic events, then replay those events through the
anthropic SDK's own accumulator: what Claude Code would end up holding.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.contract import WireProtocol
from gateway.errors import (
    AllTargetsFailed,
    BadRequest,
    GatewayError,
    ModelNotFound,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatus,
)
from gateway.translate import Translated
from gateway.translate.anthropic import count_tokens, prepare
from gateway.translate.anthropic_replies import (
    MessageStream,
    error_body,
    error_event,
    render_message,
)
from tests.fakes.anthropic_upstream import parse_events


def counter() -> Callable[[str], str]:
    n = itertools.count(1)
    return lambda prefix: f"{prefix}{next(n)}"


def body(**fields: Any) -> bytes:
    request = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
    }
    request.update(fields)
    return msgspec.json.encode(request)


def chat_of(raw_body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The OpenAI chat body a Messages request becomes, decoded."""
    exchange = prepare(raw_body, headers or {})
    return {k: msgspec.json.decode(v) for k, v in exchange.request.fields.items()}


WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


# --- requests ---------------------------------------------------------------------------------


def test_system_blocks_and_system_turns_become_one_leading_system_message() -> None:
    chat = chat_of(
        body(
            system=[
                {
                    "type": "text",
                    "text": "You are Claude Code.",
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "text", "text": "Be brief."},
            ],
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "Mid-conversation reminder."},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "again"}]},
            ],
        )
    )
    assert chat["messages"] == [
        {
            "role": "system",
            "content": "You are Claude Code.\n\nBe brief.\n\nMid-conversation reminder.",
        },
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]


def test_claude_code_fields_are_accepted_and_dropped_for_openai_upstreams() -> None:
    chat = chat_of(
        body(
            stream=True,
            thinking={"type": "enabled", "budget_tokens": 4096},
            output_config={"effort": "high"},
            context_management={"edits": [{"type": "clear_tool_uses_20250919"}]},
            metadata={"user_id": "user_abc_account_def_session_123"},
            tools=[
                {**WEATHER, "cache_control": {"type": "ephemeral"}, "defer_loading": True},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                {"type": "tool_search_tool_regex_20251119", "name": "tool_search"},
            ],
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Let me look.", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "xyz"},
                        {"type": "text", "text": "Checking."},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "go", "cache_control": {"type": "ephemeral"}}
                    ],
                },
            ],
            unknown_future_field={"anything": [1, 2]},
        )
    )
    assert set(chat) == {"model", "messages", "stream", "max_tokens", "tools"}
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "Current weather for a city",
            },
        }
    ]
    # Thinking text travels on as reasoning_content; redacted thinking and signatures do not.
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "Let me look.",
    }
    assert "thinking" not in json.dumps(chat) and "xyz" not in json.dumps(chat)


def test_images_and_documents_become_content_parts() -> None:
    chat = chat_of(
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBOR",
                            },
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                        },
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                        },
                        {
                            "type": "document",
                            "title": "spec.pdf",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "JVBE",
                            },
                        },
                        {"type": "text", "text": "Describe these."},
                    ],
                }
            ]
        )
    )
    assert chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "notes"},
        {
            "type": "file",
            "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        },
        {"type": "text", "text": "Describe these."},
    ]


def test_tool_use_and_tool_result_turns_become_tool_calls_and_tool_messages() -> None:
    chat = chat_of(
        body(
            tools=[WEATHER],
            messages=[
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking both."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C sunny"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "station offline"},
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": "AAA",
                                    },
                                },
                            ],
                        },
                        {"type": "text", "text": "Summarise."},
                    ],
                },
            ],
        )
    )
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: station offline"},
        # Tool messages are text only: the result's image rides with the user's next words.
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                {"type": "text", "text": "Summarise."},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
            None,
        ),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    chat = chat_of(body(tools=[WEATHER], tool_choice=choice))
    assert chat["tool_choice"] == expected
    assert chat.get("parallel_tool_calls") == parallel


def test_sampling_fields_and_structured_output() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    chat = chat_of(
        body(
            temperature=0.3,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END"],
            output_config={"format": {"type": "json_schema", "schema": schema}},
        )
    )
    assert chat["temperature"] == 0.3 and chat["top_p"] == 0.9 and chat["stop"] == ["END"]
    assert "top_k" not in chat
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }


def test_the_native_body_is_the_original_with_system_turns_moved_to_system() -> None:
    original = body(
        system=[{"type": "text", "text": "base", "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "adaptive"},
        messages=[
            {"role": "system", "content": "reminder"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
            },
        ],
    )
    request = prepare(original, {"anthropic-beta": "a,b"}).request
    assert isinstance(request.fields, Translated)
    native = request.native
    assert native is not None and native.protocol is WireProtocol.ANTHROPIC
    assert native.headers == {"anthropic-beta": "a,b"}
    sent = {k: msgspec.json.decode(v) for k, v in native.fields.items()}
    assert sent["thinking"] == {"type": "adaptive"}
    assert sent["system"] == [
        {"type": "text", "text": "base", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "reminder"},
    ]
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
        }
    ]
    # Without a system turn, the original is forwarded untouched.
    plain = prepare(body(thinking={"type": "adaptive"}), {}).request.native
    assert plain is not None
    assert plain.fields["thinking"] == msgspec.Raw(b'{"type":"adaptive"}')


@pytest.mark.parametrize(
    ("raw_body", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[]", "invalid request body"),
        (msgspec.json.encode({"max_tokens": 5, "messages": []}), "model"),
        (body(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
        (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (body(tools=[{"name": "x", "input_schema": "nope"}]), "tools[0].input_schema"),
    ],
)
def test_bad_requests_name_what_is_wrong(raw_body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        prepare(raw_body, {})


# --- replies ----------------------------------------------------------------------------------


def completion(
    message: dict[str, Any], finish: str | None = "stop", usage: dict[str, Any] | None = None
) -> bytes:
    return msgspec.json.encode(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "qwen",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37},
        }
    )


def test_reply_with_text_tool_calls_and_cached_usage() -> None:
    reply, usage = render_message(
        completion(
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{broken"},
                    },
                ],
            },
            finish="tool_calls",
            usage={
                "prompt_tokens": 100,
                "completion_tokens": 9,
                "prompt_tokens_details": {"cached_tokens": 60},
            },
        ),
        "claude-sonnet-4-5",
        thinking=False,
        ids=counter(),
    )
    assert msgspec.json.decode(reply) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
            # Broken JSON from a small model stays visible instead of failing the turn.
            {
                "type": "tool_use",
                "id": "call_2",
                "name": "get_weather",
                "input": {"arguments": "{broken"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 40,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 60,
            "output_tokens": 9,
        },
    }
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (100, 9)


@pytest.mark.parametrize(
    ("finish", "tools", "stop"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        # llama.cpp and Ollama have said "stop" next to tool calls: Claude Code must still run them.
        ("stop", True, "tool_use"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
    ],
)
def test_finish_reasons_become_stop_reasons(finish: str | None, tools: bool, stop: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if tools:
        message["tool_calls"] = [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]
    reply, _ = render_message(completion(message, finish), "m", False)
    assert msgspec.json.decode(reply)["stop_reason"] == stop


def test_reasoning_becomes_a_thinking_block_only_when_the_client_asked_for_thinking() -> None:
    raw_reply = completion({"role": "assistant", "content": "4", "reasoning_content": "2+2"})
    with_thinking, _ = render_message(raw_reply, "m", thinking=True)
    without, _ = render_message(raw_reply, "m", thinking=False)
    assert msgspec.json.decode(with_thinking)["content"][0] == {
        "type": "thinking",
        "thinking": "2+2",
        "signature": "turnout:unsigned",
    }
    assert [b["type"] for b in msgspec.json.decode(without)["content"]] == ["text"]


def test_a_native_message_passes_through_with_its_usage() -> None:
    native = msgspec.json.encode(
        {
            "id": "msg_x",
            "type": "message",
            "role": "assistant",
            "model": "claude",
            "content": [],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 3,
                "cache_read_input_tokens": 10,
                "cache_creation_input_tokens": 2,
                "output_tokens": 4,
            },
        }
    )
    reply, usage = render_message(native, "m", False, protocol=WireProtocol.ANTHROPIC)
    assert reply == native
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (15, 4)


# --- streams ----------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    data: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "qwen",
    }
    if delta is not None or finish is not None:
        data["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    data.update(extra)
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


USAGE = chunk(
    choices=[],
    usage={
        "prompt_tokens": 50,
        "completion_tokens": 12,
        "total_tokens": 62,
        "prompt_tokens_details": {"cached_tokens": 20},
    },
)
DONE = b"data: [DONE]\n\n"


def translate(events: list[bytes], thinking: bool = False) -> tuple[MessageStream, bytes]:
    stream = MessageStream("claude-sonnet-4-5", thinking, counter())
    out = b"".join(stream.feed(e) for e in events) + b"".join(stream.finish())
    return stream, out


def accumulate(out: bytes) -> Any:
    """What the anthropic SDK (and Claude Code, built on it) ends up with."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in parse_events(out):
        if name in ("ping", "message_stop"):
            continue
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=buffers)  # type: ignore[arg-type]
    return snapshot


def test_golden_text_stream() -> None:
    stream, out = translate(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            USAGE,
            DONE,
        ]
    )
    assert parse_events(out) == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": 30,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 20,
                    "output_tokens": 12,
                },
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert stream.done and stream.usage is not None and stream.usage.prompt_tokens == 50
    final = accumulate(out)
    assert final.content[0].text == "Hello" and final.usage.input_tokens == 30


def fragments(text: str) -> list[str]:
    return [text[i : i + 3] for i in range(0, len(text), 3)]


def tool_head(index: int, call_id: str, name: str, arguments: str = "") -> dict[str, Any]:
    return {
        "tool_calls": [
            {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ]
    }


def tool_args(index: int, fragment: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}


def test_golden_streamed_tool_call_with_arguments_in_many_fragments() -> None:
    arguments = '{"city": "Paris", "units": "celsius", "days": [1, 2, 3]}'
    pieces = fragments(arguments)
    assert len(pieces) > 15
    _, out = translate(
        [
            chunk(
                {"role": "assistant", "content": None, **tool_head(0, "call_abc", "get_weather")}
            ),
            *(chunk(tool_args(0, p)) for p in pieces),
            chunk({}, "tool_calls"),
            USAGE,
            DONE,
        ]
    )
    events = parse_events(out)
    assert events[1] == (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "tool_use",
                "id": "call_abc",
                "name": "get_weather",
                "input": {},
            },
        },
    )
    deltas = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert deltas == pieces, "every fragment is forwarded as it arrives, in order"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    final = accumulate(out)
    assert final.content[0].name == "get_weather" and final.content[0].input == json.loads(
        arguments
    )


def test_golden_parallel_tool_calls_after_text_llamacpp_style() -> None:
    # llama.cpp: the head delta already carries the first argument fragment.
    _, out = translate(
        [
            chunk({"role": "assistant", "content": None}),
            chunk({"content": "Both:"}),
            chunk(tool_head(0, "a", "get_weather", '{"ci')),
            chunk(tool_args(0, 'ty":"Paris"}')),
            chunk(tool_head(1, "b", "get_time", '{"tz"')),
            chunk(tool_args(1, ':"CET"}')),
            chunk({}, "tool_calls"),
            DONE,
        ]
    )
    names = [(n, d.get("index")) for n, d in parse_events(out)]
    assert names == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    final = accumulate(out)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[1].input == {"city": "Paris"} and final.content[2].input == {"tz": "CET"}


def test_mlx_style_whole_calls_in_one_chunk_and_a_name_after_its_arguments() -> None:
    _, out = translate(
        [
            chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "x",
                            "type": "function",
                            "function": {"name": "a", "arguments": '{"n":1}'},
                        },
                        {
                            "index": 1,
                            "id": "y",
                            "type": "function",
                            "function": {"name": "b", "arguments": '{"n":2}'},
                        },
                    ],
                }
            ),
            # A server that sends arguments before the name: the block waits for the name.
            chunk({"tool_calls": [{"index": 2, "id": "z", "function": {"arguments": '{"n":'}}]}),
            chunk({"tool_calls": [{"index": 2, "function": {"name": "c", "arguments": "3}"}}]}),
            chunk({"role": "assistant"}, "tool_calls"),
            DONE,
        ]
    )
    final = accumulate(out)
    assert [(b.name, b.input) for b in final.content] == [
        ("a", {"n": 1}),
        ("b", {"n": 2}),
        ("c", {"n": 3}),
    ]


def test_thinking_blocks_come_from_reasoning_only_when_asked() -> None:
    events = [
        chunk({"reasoning_content": "hmm"}),
        chunk({"reasoning": " ok"}),
        chunk({"content": "4"}),
        chunk({}, "stop"),
        DONE,
    ]
    _, asked = translate(events, thinking=True)
    _, silent = translate(events, thinking=False)
    final = accumulate(asked)
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[
        0
    ].thinking == "hmm ok"
    assert [b.type for b in accumulate(silent).content] == ["text"]


def test_stream_that_ends_after_the_finish_chunk_without_done_is_whole() -> None:
    stream, out = translate([chunk({"content": "hi"}), chunk({}, "length")])
    assert stream.done and parse_events(out)[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_stream_cut_before_the_answer_ends_raises_for_an_in_band_error() -> None:
    stream = MessageStream("m", False, counter())
    stream.feed(chunk({"content": "partial"}))
    with pytest.raises(UpstreamProtocolError, match="ended before"):
        stream.finish()
    assert parse_events(stream.fail(UpstreamProtocolError("cut"))) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "cut"}})
    ]
    assert stream.finish() == []


@pytest.mark.parametrize(
    "event",
    [
        chunk(error={"message": "model crashed", "type": "server_error"}),  # OpenAI style
        b'error: {"code":500,"message":"model crashed","type":"server_error"}\n\n',  # llama.cpp
    ],
)
def test_in_band_upstream_errors_raise_with_their_message(event: bytes) -> None:
    stream = MessageStream("m", False, counter())
    stream.feed(chunk({"content": "a"}))
    with pytest.raises(UpstreamError, match="model crashed"):
        stream.feed(event)


def test_empty_answer_still_opens_and_closes_the_message() -> None:
    _stream, out = translate([DONE])
    assert [n for n, _ in parse_events(out)] == ["message_start", "message_delta", "message_stop"]


def test_openai_events_with_an_event_line_are_translated_not_relayed_as_native() -> None:
    # Some OpenAI-compatible servers name their events. The stream used to guess "native
    # Anthropic" from a leading ``event:`` and relay OpenAI chunks raw to Anthropic clients;
    # only the forwarder's word (``begin``) makes a stream native now.
    named = [b"event: completion\n" + e for e in (chunk({"content": "Hi"}), chunk({}, "stop"))]
    stream, out = translate([*named, USAGE, DONE])
    assert parse_events(out)[0][0] == "message_start"
    assert accumulate(out).content[0].text == "Hi"
    assert stream.usage is not None and stream.usage.completion_tokens == 12


def test_native_anthropic_events_are_relayed_unchanged_and_counted() -> None:
    events = [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
        b'"model":"claude","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":7,'
        b'"cache_read_input_tokens":3,"output_tokens":1}}}\n\n',
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        b'"usage":{"output_tokens":5}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    stream = MessageStream("m", False, counter())
    stream.begin(WireProtocol.ANTHROPIC)  # the forwarder says so; nothing sniffs the bytes
    assert b"".join(stream.feed(e) for e in events) == b"".join(events)
    assert stream.finish() == []
    assert stream.usage is not None and (
        stream.usage.prompt_tokens,
        stream.usage.completion_tokens,
    ) == (10, 5)


# --- errors and count_tokens ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (BadRequest("bad"), "invalid_request_error"),
        (ModelNotFound("no such model"), "not_found_error"),
        (UpstreamStatus(429, b"{}"), "rate_limit_error"),
        (AllTargetsFailed("all failed", UpstreamStatus(500, b"{}")), "api_error"),
        (GatewayError("boom"), "api_error"),
    ],
)
def test_errors_use_anthropics_envelope(error: GatewayError, kind: str) -> None:
    assert msgspec.json.decode(error_body(error, "req_1")) == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": "req_1",
    }
    assert parse_events(error_event(error))[0][1]["error"]["type"] == kind


def test_count_tokens_estimates_every_part_of_the_request() -> None:
    small = msgspec.json.decode(count_tokens(body()))["input_tokens"]
    bigger = msgspec.json.decode(
        count_tokens(
            body(
                system="You are helpful. " * 50,
                tools=[WEATHER],
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hi " * 100},
                            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                        ],
                    }
                ],
            )
        )
    )["input_tokens"]
    assert 0 < small < bigger


# --- fuzzing ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
block_types = st.sampled_from(
    ["text", "image", "document", "tool_use", "tool_result", "thinking", "weird"]
)
blocks = st.fixed_dictionaries(
    {"type": block_types},
    optional={
        "text": st.text(max_size=10) | json_values,
        "source": st.fixed_dictionaries(
            {"type": st.sampled_from(["base64", "url", "text", "file"])},
            optional={
                "data": st.text(max_size=5),
                "url": st.text(max_size=5),
                "media_type": st.text(max_size=5),
            },
        )
        | json_values,
        "id": st.text(max_size=4),
        "name": st.text(max_size=4),
        "input": json_values,
        "tool_use_id": st.text(max_size=4),
        "is_error": st.booleans(),
        "content": st.text(max_size=5)
        | st.lists(
            st.fixed_dictionaries({"type": block_types, "text": st.text(max_size=5)}), max_size=2
        ),
    },
)
turns = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool"]),
        "content": st.text(max_size=10) | st.lists(blocks, max_size=4) | json_values,
    }
)
requests = st.fixed_dictionaries(
    {"model": st.text(max_size=5), "messages": st.lists(turns, max_size=4)},
    optional={
        "system": st.text(max_size=5) | st.lists(blocks, max_size=2) | json_values,
        "tools": st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=4)},
                optional={"input_schema": json_values, "type": st.text(max_size=4)},
            ),
            max_size=2,
        ),
        "tool_choice": st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "tool", "none", "x"])},
            optional={"name": st.text(max_size=3)},
        )
        | json_values,
        "thinking": json_values,
        "stream": st.booleans() | json_values,
        "max_tokens": st.integers() | json_values,
        "output_config": json_values,
        "stop_sequences": json_values,
        "temperature": json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests | json_values)
def test_no_request_makes_the_translator_raise_anything_but_a_bad_request(request: Any) -> None:
    raw_body = msgspec.json.encode(request)
    try:
        exchange = prepare(raw_body, {})
    except BadRequest:
        return
    # Whatever got through is a chat body every value of which is valid JSON.
    for value in exchange.request.fields.values():
        msgspec.json.decode(value)
    try:
        count_tokens(raw_body)
    except BadRequest:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_no_bytes_make_the_translator_raise_anything_but_a_bad_request(raw_body: bytes) -> None:
    try:
        prepare(raw_body, {})
    except BadRequest:
        pass


deltas = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["assistant", None]),
        "content": st.none() | st.text(max_size=5),
        "reasoning_content": st.none() | st.text(max_size=5),
        "tool_calls": st.none()
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": st.none() | st.integers(0, 3),
                    "id": st.none() | st.text(max_size=3),
                    "function": st.fixed_dictionaries(
                        {},
                        optional={
                            "name": st.none() | st.text(max_size=3),
                            "arguments": st.none() | st.text(max_size=4),
                        },
                    ),
                },
            ),
            max_size=3,
        ),
    },
)
chunks = st.one_of(
    st.builds(
        lambda d, f: chunk(d, f),
        deltas,
        st.none() | st.sampled_from(["stop", "length", "tool_calls"]),
    ),
    st.just(USAGE),
    st.just(DONE),
    st.binary(max_size=20).map(lambda b: b"data: " + b + b"\n\n"),
    st.builds(lambda v: b"data: " + msgspec.json.encode(v) + b"\n\n", json_values),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(chunks, max_size=12), st.booleans())
def test_any_upstream_stream_yields_well_formed_events_or_a_gateway_error(
    events: list[bytes], thinking: bool
) -> None:
    stream = MessageStream("m", thinking, counter())
    out = b""
    try:
        for event in events:
            out += stream.feed(event)
        out += b"".join(stream.finish())
    except GatewayError as exc:
        out += stream.fail(exc)
    parsed = parse_events(out)
    if parsed and parsed[-1][0] != "error":
        assert parsed[0][0] == "message_start" and parsed[-1][0] == "message_stop"
    assert_block_order(parsed)
    try:
        accumulate(out.split(b"event: error\n")[0])
    except ValueError as exc:
        # Arguments that start like an object stream as the model writes them, broken JSON
        # included (as with Anthropic's own fine-grained tool streaming, which Claude Code
        # asks for); anything else the SDK builds without complaint.
        assert "tool parameter JSON" in str(exc)


def assert_block_order(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Anthropic's order: blocks start at consecutive indexes, one at a time, and stop."""
    started, open_block = 0, None
    for name, data in events:
        if name == "content_block_start":
            assert open_block is None and data["index"] == started
            open_block, started = data["index"], started + 1
        elif name == "content_block_stop":
            assert data["index"] == open_block
            open_block = None
        elif name == "content_block_delta":
            assert data["index"] < started
        elif name in ("message_delta", "message_stop"):
            assert open_block is None


json_objects = st.dictionaries(
    st.text(max_size=5), st.integers() | st.text(max_size=5) | st.booleans(), max_size=4
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(json_objects, st.lists(st.integers(1, 6), min_size=1, max_size=8)),
        min_size=1,
        max_size=3,
    )
)
def test_tool_arguments_split_anywhere_arrive_whole(
    calls: list[tuple[dict[str, Any], list[int]]],
) -> None:
    events = []
    for index, (arguments, cuts) in enumerate(calls):
        text = json.dumps(arguments)
        pieces, at = [], 0
        for cut in cuts:
            pieces.append(text[at : at + cut])
            at += cut
        pieces.append(text[at:])
        events.append(chunk(tool_head(index, f"call_{index}", f"tool_{index}", pieces[0])))
        events += [chunk(tool_args(index, p)) for p in pieces[1:] if p]
    _, out = translate([*events, chunk({}, "tool_calls"), DONE])
    final = accumulate(out)
    assert [b.input for b in final.content] == [a for a, _ in calls]


@pytest.mark.parametrize(
    ("fragments", "expected"),
    [
        (['"{\\"city\\": ', '\\"Paris\\"}"'], {"city": "Paris"}),  # double-encoded
        (["Paris", " please"], {"arguments": "Paris please"}),  # not JSON at all
        (["  ", "\n"], {}),  # nothing
    ],
)
def test_tool_arguments_that_are_not_an_object_are_sent_whole_as_one(
    fragments: list[str], expected: dict[str, Any]
) -> None:
    _, out = translate(
        [
            chunk(tool_head(0, "c", "get_weather", fragments[0])),
            *(chunk(tool_args(0, f)) for f in fragments[1:]),
            chunk({}, "tool_calls"),
            DONE,
        ]
    )
    deltas = [
        d["delta"]["partial_json"] for n, d in parse_events(out) if n == "content_block_delta"
    ]
    assert len(deltas) == 1
    assert accumulate(out).content[0].input == expected
