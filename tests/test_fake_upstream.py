"""The fake OpenAI upstream speaks the real wire format: the official SDK talks to it directly,
and its llama.cpp / mlx flavors match the shapes recorded from the real engines."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from tests.fakes.openai_upstream import DONE, FakeOpenAI

SAMPLES = Path("/work/shared/reference/engines/samples")
ROOT = Path(__file__).resolve().parents[1]
USER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about Paris, please."}
]
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    # max_retries=0: the SDK would otherwise retry scripted 429/5xx on its own
    async with AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0) as sdk:
        yield sdk


async def raw_post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def arguments_fragment(chunk: ChatCompletionChunk) -> str:
    """The piece of the first tool call's arguments that one stream chunk carries."""
    calls = chunk.choices[0].delta.tool_calls
    assert calls and calls[0].function and calls[0].function.arguments is not None
    return calls[0].function.arguments


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    """The message's tool calls, which the fake only ever makes function calls."""
    calls = message.tool_calls or []
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]


def sse_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    return raw[:-2].split(b"\n\n")


def data_objects(raw: bytes) -> list[Any]:
    """The JSON payloads of the ``data:`` events, without [DONE] and comments."""
    return [json.loads(e[6:]) for e in sse_events(raw) if e.startswith(b"data: {")]


# the SDK against the default (openai) flavor


async def test_chat_non_stream_echoes_and_records(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, temperature=0.2
    )

    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "gpt-4o-mini"
    choice = reply.choices[0]
    assert choice.message.content == "echo: Tell me about Paris, please."
    assert choice.message.role == "assistant" and choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == fake.stream_chunks
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    [rec] = fake.requests
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.headers["authorization"] == "Bearer x"
    assert rec.body == {"model": "gpt-4o-mini", "messages": USER, "temperature": 0.2}
    assert rec.model == "gpt-4o-mini" and rec.stream is False and rec.scenario == "ok"
    fake.reset()
    assert fake.requests == []


async def test_chat_stream_with_usage(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="ok", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    first, *content, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert len(content) == fake.stream_chunks == 20
    assert (
        "".join(c.choices[0].delta.content or "" for c in content)
        == "echo: Tell me about Paris, please."
    )
    assert finish.choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 20
    assert {c.id for c in chunks} == {first.id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)


async def test_stream_wire_format_is_openais(fake: FakeOpenAI) -> None:
    fake.stream_chunks = 3
    body = {"model": "ok", "messages": USER, "stream": True}
    status, headers, raw = await raw_post(fake.url + "/chat/completions", body)

    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = sse_events(raw)
    assert events[-1] + b"\n\n" == DONE
    for event in events[:-1]:
        obj = json.loads(event[6:])
        assert (
            event == b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        )
        assert "usage" not in obj  # only with stream_options.include_usage
        assert list(obj) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    objs = data_objects(raw)
    assert [o["choices"][0]["delta"] for o in objs] == [
        {"role": "assistant", "content": ""},
        {"content": "echo: Tell "},
        {"content": "me about Pa"},
        {"content": "ris, please."},
        {},
    ]
    assert objs[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }

    _, _, raw = await raw_post(
        fake.url + "/chat/completions", {**body, "stream_options": {"include_usage": True}}
    )
    *chunks, usage = data_objects(raw)
    assert all(c["usage"] is None for c in chunks)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3


async def test_tool_call_stream_reassembles(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="tools", messages=USER, tools=[WEATHER_TOOL], stream=True
    )
    chunks = [chunk async for chunk in stream]

    head = chunks[0].choices[0].delta
    assert head.role == "assistant" and head.content is None
    assert head.tool_calls is not None
    [call] = head.tool_calls
    assert call.index == 0 and call.type == "function" and call.id and call.id.startswith("call_")
    assert call.function is not None
    assert call.function.name == "get_weather" and call.function.arguments == ""
    fragments = [arguments_fragment(c) for c in chunks[1:-1]]
    assert len(fragments) > 2
    assert json.loads("".join(fragments)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_parallel_tool_calls(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    fake.tool_calls = [("get_weather", '{"city":"Paris"}'), ("get_time", '{"tz":"Europe/Paris"}')]
    reply = await client.chat.completions.create(model="tools", messages=USER, tools=[WEATHER_TOOL])
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    assert [
        (c.function.name, json.loads(c.function.arguments)) for c in function_calls(message)
    ] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]

    stream = await client.chat.completions.create(
        model="tools", messages=USER, tools=[WEATHER_TOOL], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            call["arguments"] += delta.function.arguments or "" if delta.function else ""
    assert calls == {
        0: {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        1: {"name": "get_time", "arguments": '{"tz":"Europe/Paris"}'},
    }


@pytest.mark.parametrize(
    ("model", "exc", "code"),
    [
        ("error-400", openai.BadRequestError, None),
        ("error-401", openai.AuthenticationError, "invalid_api_key"),
        ("error-404", openai.NotFoundError, "model_not_found"),
        ("error-429", openai.RateLimitError, "rate_limit_exceeded"),
        ("error-500", openai.InternalServerError, None),
        ("error-503", openai.InternalServerError, None),
    ],
)
async def test_error_statuses_raise_sdk_exceptions(
    client: AsyncOpenAI, model: str, exc: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(exc) as info:
        await client.chat.completions.create(model=model, messages=USER, stream=True)
    error = info.value
    assert error.status_code == int(model[-3:])
    assert error.code == code
    assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "param", "code"}
    if model == "error-429":
        assert error.response.headers["retry-after"] == "1"


async def test_fail_next_script_and_sticky_scenario(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    fake.fail_next(2, 503)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="ok", messages=USER)
    assert (await client.chat.completions.create(model="ok", messages=USER)).choices[
        0
    ].finish_reason == "stop"
    assert [r.scenario for r in fake.requests] == ["error-503", "error-503", "ok"]

    fake.script = ["tools"]
    fake.fail_next(1, 429)  # goes ahead of what is already scripted
    fake.scenario = "error-400"
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="ok", messages=USER)
    reply = await client.chat.completions.create(model="ok", messages=USER, tools=[WEATHER_TOOL])
    assert reply.choices[0].finish_reason == "tool_calls"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="ok", messages=USER)

    fake.scenario = "no-such-scenario"  # typos are loud, not a silent "ok"
    with pytest.raises(openai.InternalServerError, match="unknown scenario"):
        await client.chat.completions.create(model="ok", messages=USER)
    fake.reset()
    # Widened: mypy still holds ``scenario`` to the string set above; reset() cleared it.
    after_reset: tuple[object, ...] = (fake.requests, fake.script, fake.scenario)
    assert after_reset == ([], [], None)
    with pytest.raises(ValueError):
        fake.fail_next(1, 200)


async def test_slow_first_byte(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    fake.first_byte_delay = 0.3
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="slow-first-byte", messages=USER, timeout=0.1)
    started = time.monotonic()
    reply = await client.chat.completions.create(model="slow-first-byte", messages=USER)
    assert time.monotonic() - started >= 0.3
    assert reply.choices[0].message.content == "echo: Tell me about Paris, please."


async def test_hang_never_answers_and_stop_is_prompt(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="hang", messages=USER, timeout=0.2)
    pending = asyncio.create_task(client.chat.completions.create(model="hang", messages=USER))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await fake.stop()
    assert time.monotonic() - started < 0.5
    with pytest.raises(openai.APIConnectionError):
        await pending


async def test_mid_stream_failures(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):  # connection closed without [DONE]
        stream = await client.chat.completions.create(
            model="drop-mid-stream", messages=USER, stream=True
        )
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == fake.mid_stream_after == 3

    with pytest.raises(openai.APIError, match="The server had an error"):
        stream = await client.chat.completions.create(
            model="error-mid-stream", messages=USER, stream=True
        )
        async for _ in stream:
            pass

    with pytest.raises(openai.APITimeoutError):
        stream = await client.chat.completions.create(
            model="stall-mid-stream", messages=USER, stream=True, timeout=0.3
        )
        async for _ in stream:
            pass

    with pytest.raises(openai.APIConnectionError):  # non-stream: half the body, then close
        await client.chat.completions.create(model="drop-mid-stream", messages=USER)


async def test_max_tokens_truncates_like_an_engine(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="ok", messages=USER, max_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert "echo: Tell me about Paris, please.".startswith(reply.choices[0].message.content or "-")


async def test_completions(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    reply = await client.completions.create(model="ok", prompt="Once upon")
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].text == "echo: Once upon" and reply.choices[0].finish_reason == "stop"

    stream = await client.completions.create(
        model="ok", prompt="Once upon", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: Once upon"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == fake.stream_chunks
    assert fake.requests[-1].path == "/v1/completions"


async def test_embeddings(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    # the SDK asks for base64 by default and decodes little-endian float32
    default = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert fake.requests[-1].body["encoding_format"] == "base64"
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    a, b = (d.embedding for d in floats.data)
    assert len(a) == fake.embedding_dim and a != b
    assert abs(sum(x * x for x in a) - 1.0) < 1e-5
    assert default.model == "text-embedding-3-small" and default.usage.total_tokens > 0

    sized = await client.embeddings.create(
        model="e", input="a", dimensions=3, encoding_format="float"
    )
    assert len(sized.data[0].embedding) == 3
    status, _, raw = await raw_post(
        fake.url + "/embeddings", {"model": "e", "input": "a", "encoding_format": "base64"}
    )
    packed = base64.b64decode(json.loads(raw)["data"][0]["embedding"])
    assert status == 200 and list(struct.unpack("<8f", packed)) == a


async def test_models_health_and_unknown_paths(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    assert [m.id for m in models] == ["ok", "tools"] and models[0].owned_by == "openai"
    async with aiohttp.ClientSession() as session:
        async with session.get(fake.origin + "/health") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        fake.healthy = False
        async with session.get(fake.origin + "/health") as resp:
            assert resp.status == 503
        async with session.post(fake.origin + "/v1/messages", json={"model": "claude"}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["message"] == "Invalid URL (POST /v1/messages)"
        async with session.post(fake.url + "/chat/completions", data=b"{not json") as resp:
            assert (
                resp.status == 400
                and "could not parse the JSON" in (await resp.json())["error"]["message"]
            )
    # everything is recorded, even paths the fake does not serve (canary upstreams)
    assert [(r.method, r.path) for r in fake.requests] == [
        ("GET", "/v1/models"),
        ("GET", "/health"),
        ("GET", "/health"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/chat/completions"),
    ]
    assert fake.requests[-1].body is None and fake.requests[-1].raw == b"{not json"


async def test_model_alias(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    fake.model_alias = "tiny"  # like llama-server -a tiny: the reply names the alias
    reply = await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert reply.model == "tiny"


def test_thread_mode_serves_sync_clients() -> None:
    with FakeOpenAI() as fake, OpenAI(base_url=fake.url, api_key="x", max_retries=0) as sdk:
        reply = sdk.chat.completions.create(model="ok", messages=USER)
        assert reply.choices[0].message.content == "echo: Tell me about Paris, please."
        fake.fail_next(1, 500)
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(model="ok", messages=USER)
    assert len(fake.requests) == 2


def test_standalone_entry_point() -> None:
    command = [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", "0", "--chunks", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            with OpenAI(base_url=url, api_key="x", max_retries=0) as sdk:
                chunks = list(sdk.chat.completions.create(model="ok", messages=USER, stream=True))
            assert len(chunks) == 1 + 4 + 1
        finally:
            proc.terminate()
        assert proc.wait(10) == 0


# flavors


async def test_llamacpp_flavor_quirks() -> None:
    async with FakeOpenAI(flavor="llamacpp", stream_chunks=4) as fake:
        async with AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(model="ok", messages=USER, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
            assert text == "echo: Tell me about Paris, please."
            reply = await sdk.chat.completions.create(
                model="tools", messages=USER, tools=[WEATHER_TOOL]
            )
            assert reply.choices[0].message.content == ""  # "" next to tool_calls, not null
        body = {"model": "ok", "messages": USER, "stream": True}
        _, headers, raw = await raw_post(fake.origin + "/chat/completions", body)  # no /v1 needed
        objs = data_objects(raw)
        assert headers["Content-Type"] == "text/event-stream"
        assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
        assert "timings" in objs[-1] and objs[-1]["choices"][0]["finish_reason"] == "stop"
        status, _, raw = await raw_post(
            fake.url + "/chat/completions", {**body, "model": "error-503"}
        )
        assert (status, json.loads(raw)) == (
            503,
            {
                "error": {
                    "code": 503,
                    "message": "The server is overloaded or not ready yet.",
                    "type": "unavailable_error",
                }
            },
        )
        _, _, raw = await raw_post(
            fake.url + "/chat/completions", {**body, "model": "error-mid-stream"}
        )
        assert sse_events(raw)[-1].startswith(b'error: {"code":500,')


async def test_mlx_flavor_quirks() -> None:
    async with FakeOpenAI(flavor="mlx", stream_chunks=4) as fake:
        async with AsyncOpenAI(base_url=fake.url, api_key="x", max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(
                model="ok", messages=USER, stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in stream]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
                "echo: Tell me about Paris, please."
            )
            assert chunks[-1].usage is not None
            reply = await sdk.chat.completions.create(
                model="tools", messages=USER, tools=[WEATHER_TOOL]
            )
            [call] = function_calls(reply.choices[0].message)
            assert reply.choices[0].message.content is None
            assert call.function.arguments == '{"city": "Paris"}'
        body = {"model": "tools", "messages": USER, "tools": [WEATHER_TOOL], "stream": True}
        _, _, raw = await raw_post(fake.url + "/chat/completions", body)
        events = sse_events(raw)
        assert events[:2] == [b": keepalive 0/1", b": keepalive 1/1"]
        tool_chunk, finish = data_objects(raw)
        assert (
            tool_chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
            == '{"city": "Paris"}'
        )
        assert finish["choices"][0]["delta"] == {"role": "assistant"}
        status, _, raw = await raw_post(
            fake.url + "/chat/completions", {**body, "model": "error-404"}
        )
        assert status == 404 and isinstance(json.loads(raw)["error"], str)


def shape(value: Any) -> Any:
    """Keys (in order) and value types, recursively: what must match a real engine's reply."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__


def formatted_like(flavor: str, line: bytes) -> bool:
    obj = json.loads(line)
    if flavor == "mlx":
        return line == json.dumps(obj).encode()
    return line == json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sample_events(name: str) -> list[bytes]:
    return [e[6:] for e in sse_events((SAMPLES / name).read_bytes()) if e.startswith(b"data: {")]


STREAM_SAMPLES = [
    ("llamacpp", "llama-chat-stream.sse", "ok"),
    ("llamacpp", "llama-chat-scripted-toolcall-stream.sse", "tools"),
    ("mlx", "mlx-chat-stream.sse", "ok"),
    ("mlx", "mlx-chat-scripted-toolcall-stream.sse", "tools"),
]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="recorded engine samples not available")
@pytest.mark.parametrize(("flavor", "sample", "model"), STREAM_SAMPLES)
async def test_flavor_streams_match_recorded_samples(flavor: str, sample: str, model: str) -> None:
    expected = sample_events(sample)
    body = {
        "model": model,
        "messages": USER,
        "tools": [WEATHER_TOOL],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with FakeOpenAI(flavor=flavor, stream_chunks=4) as fake:
        _, _, raw = await raw_post(fake.url + "/chat/completions", body)
    ours = [e[6:] for e in sse_events(raw) if e.startswith(b"data: {")]
    assert sse_events(raw)[-1] == b"data: [DONE]"
    assert all(formatted_like(flavor, line) for line in expected + ours)
    # first chunk, a middle chunk, the finish chunk and the usage chunk have the engine's shape
    for index in (0, 1, -2, -1):
        assert shape(json.loads(ours[index])) == shape(json.loads(expected[index])), index


JSON_SAMPLES = [
    ("llamacpp", "llama-chat-scripted-hello.json", "/chat/completions", "ok"),
    ("llamacpp", "llama-chat-scripted-toolcall.json", "/chat/completions", "tools"),
    ("mlx", "mlx-chat-scripted-hello.json", "/chat/completions", "ok"),
    ("mlx", "mlx-chat-scripted-toolcall.json", "/chat/completions", "tools"),
    ("mlx", "mlx-completions.json", "/completions", "ok"),
]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="recorded engine samples not available")
@pytest.mark.parametrize(("flavor", "sample", "path", "model"), JSON_SAMPLES)
async def test_flavor_replies_match_recorded_samples(
    flavor: str, sample: str, path: str, model: str
) -> None:
    expected = (SAMPLES / sample).read_bytes().strip()
    body = {"model": model, "messages": USER, "prompt": "Once", "tools": [WEATHER_TOOL]}
    async with FakeOpenAI(flavor=flavor) as fake:
        status, _, raw = await raw_post(fake.url + path, body)
    assert status == 200
    assert formatted_like(flavor, expected) and formatted_like(flavor, raw)
    assert shape(json.loads(raw)) == shape(json.loads(expected))
