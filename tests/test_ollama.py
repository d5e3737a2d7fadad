"""The Ollama adapter: OpenAI in, Ollama's native API out, and back.

Pure translation first, then the adapter against a fake Ollama on loopback, then the whole
gateway driven by the official openai SDK with the fake behind it.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import aiohttp
import msgspec
import openai
import pytest

from adapters.base import Operation, UpstreamRequest
from adapters.builtin import default_registry
from adapters.ollama import (
    LoadedModel,
    OllamaAdapter,
    Reply,
    chat_body,
    chat_completion,
    ollama_root,
    same_model,
)
from gateway.config import Provider, Timeouts
from gateway.errors import (
    BadRequest,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
)
from tests.fakes.ollama_upstream import FakeOllama
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway

_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
# Any: the SDK types messages and tools as TypedDicts these plain literals cannot name.
USER: Any = [{"role": "user", "content": "ping"}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


def fields_of(body: dict[str, Any]) -> dict[str, msgspec.Raw]:
    return _FIELDS.decode(json.dumps(body).encode())


def request(
    op: Operation, body: dict[str, Any], model: str = "llama3.2", stream: bool = False
) -> UpstreamRequest:
    return UpstreamRequest(op, fields_of(body), model, stream, "req42")


def chat(body: dict[str, Any], model: str = "llama3.2", stream: bool = False) -> UpstreamRequest:
    return request(Operation.CHAT, {"messages": USER, **body}, model, stream)


async def events_of(adapter: OllamaAdapter, req: UpstreamRequest) -> list[Any]:
    """Every SSE event of a stream: decoded chunks, and the final ``"[DONE]"``."""
    stream = await adapter.open_stream(req)
    out: list[Any] = []
    try:
        async for event in stream:
            assert event.startswith(b"data: ") and event.endswith(b"\n\n")
            data = event[6:-2]
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    finally:
        await stream.aclose()
    return out


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as upstream:
        yield upstream


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def adapter(fake: FakeOllama, session: aiohttp.ClientSession) -> OllamaAdapter:
    # A trailing /v1 (Ollama's OpenAI mount, a common copy-paste) still means the server root.
    provider = Provider(kind="ollama", base_url=fake.url + "/v1/")
    created = default_registry().create("ollama", provider, session)
    assert isinstance(created, OllamaAdapter)
    return created


# --- translation (pure) ------------------------------------------------------------------------


def test_base_url_is_the_server_root_with_or_without_v1() -> None:
    assert ollama_root("http://127.0.0.1:11434") == "http://127.0.0.1:11434"
    assert ollama_root("http://127.0.0.1:11434/") == "http://127.0.0.1:11434"
    assert ollama_root("http://127.0.0.1:11434/v1") == "http://127.0.0.1:11434"
    assert ollama_root("http://box/ollama/v1/") == "http://box/ollama"


def test_model_names_match_with_or_without_the_latest_tag() -> None:
    assert same_model("llama3.2", "llama3.2:latest")
    assert not same_model("llama3.2", "llama3.2:1b")
    assert same_model("registry:5000/ns/m", "registry:5000/ns/m:latest")


def test_chat_body_translates_a_whole_tool_conversation() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "11 degrees"},
    ]
    body = chat_body(
        fields_of(
            {
                "messages": messages,
                "tools": [WEATHER],
                "temperature": 0.2,
                "top_p": 0.9,
                "seed": 7,
                "stop": "END",
                "max_tokens": 10,
                "max_completion_tokens": 20,
                "presence_penalty": 0.5,
                "frequency_penalty": 0.25,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": {"type": "object"}},
                },
                "user": "ignored",
            }
        ),
        "llama3.2",
        stream=False,
        keep_alive="10m",
    )
    assert body["model"] == "llama3.2" and body["stream"] is False
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather\nin Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    "id": "call_1",
                }
            ],
        },
        {
            "role": "tool",
            "content": "11 degrees",
            "tool_name": "get_weather",
            "tool_call_id": "call_1",
        },
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["function"]["parameters"],
            },
        }
    ]
    assert body["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "num_predict": 20,  # max_completion_tokens wins over the deprecated max_tokens
        "stop": ["END"],
    }
    assert body["format"] == {"type": "object"}
    assert body["keep_alive"] == "10m"
    assert "user" not in body


def test_json_mode_native_extras_and_tool_choice() -> None:
    fields = fields_of(
        {
            "messages": USER,
            "response_format": {"type": "json_object"},
            "options": {"num_ctx": 8192, "temperature": 0.0},
            "temperature": 1.0,
            "keep_alive": -1,
            "reasoning_effort": "low",
            "tools": [WEATHER, {**WEATHER, "function": {"name": "other"}}],
            "tool_choice": {"type": "function", "function": {"name": "other"}},
        }
    )
    body = chat_body(fields, "m", stream=True, keep_alive=None)
    assert body["format"] == "json"
    assert body["options"] == {"temperature": 0.0, "num_ctx": 8192}  # the native options win
    assert body["keep_alive"] == -1  # the client's, since the provider sets none
    assert body["think"] == "low"
    assert [t["function"]["name"] for t in body["tools"]] == ["other"]
    none = chat_body(
        fields_of({"messages": USER, "tools": [WEATHER], "tool_choice": "none"}), "m", True, "5m"
    )
    assert "tools" not in none and none["keep_alive"] == "5m"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{oops"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[1]"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url",
        ),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),  # Ollama would read it as "load the model"
        ({"messages": USER, "n": 2}, "n"),
        (
            {
                "messages": USER,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
            },
            "response_format",
        ),
        ({"messages": USER, "tools": [{"type": "code_interpreter"}]}, "tools"),
    ],
)
def test_bad_input_is_a_bad_request_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        chat_body(fields_of(body), "m", stream=False, keep_alive=None)
    assert caught.value.param == param


def test_reply_keeps_thinking_and_logprobs_in_openais_places() -> None:
    raw = {
        "model": "qwen3",
        "message": {"role": "assistant", "content": "Hi", "thinking": "User greets."},
        "done": True,
        "done_reason": "stop",
        "logprobs": [{"token": "Hi", "logprob": -0.1}],
        "prompt_eval_count": 3,
        "eval_count": 1,
    }
    reply = msgspec.json.decode(json.dumps(raw), type=Reply)
    body = chat_completion(reply, chat({}), created=0)
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hi", "reasoning_content": "User greets."}
    assert body["choices"][0]["logprobs"] == {
        "content": [{"token": "Hi", "logprob": -0.1, "bytes": None, "top_logprobs": []}]
    }
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


# --- the adapter against a fake Ollama ---------------------------------------------------------


async def test_chat_reply_is_an_openai_chat_completion(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    fake.reply = "Hello there"
    reply = await adapter.send(chat({"temperature": 0.1}))
    assert reply.status == 200
    body = json.loads(reply.body)
    assert body["id"] == "chatcmpl-req42" and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "llama3.2"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    sent = fake.posts("/api/chat")[-1]
    assert sent.body == {
        "model": "llama3.2",
        "messages": USER,
        "stream": False,
        "options": {"temperature": 0.1},
    }


async def test_chat_stream_becomes_sse_chunks_with_usage_and_done(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    fake.reply = "one two three"
    events = await events_of(adapter, chat({}, stream=True))
    assert fake.posts("/api/chat")[-1].body["stream"] is True
    *chunks, usage, done = events
    assert done == "[DONE]"
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-req42" for c in events[:-1]
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "one two three"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4


async def test_streamed_tool_call_is_a_tool_call_delta_never_content(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    fake.tool_calls = [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET", "h24": True}),
    ]
    events = await events_of(adapter, chat({"tools": [WEATHER]}, stream=True))
    chunks = [c for c in events[:-1] if c["choices"]]
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks)
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert [(tc["index"], tc["type"], tc["function"]["name"]) for tc in calls] == [
        (0, "function", "get_weather"),
        (1, "function", "get_time"),
    ]
    assert [json.loads(tc["function"]["arguments"]) for tc in calls] == [
        {"city": "Paris"},
        {"zone": "CET", "h24": True},
    ]
    assert all(tc["id"].startswith("call_") for tc in calls)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_max_tokens_becomes_num_predict_and_a_cut_reply_finishes_with_length(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    fake.reply = "a b c d e f"
    body = json.loads((await adapter.send(chat({"max_tokens": 2}))).body)
    assert fake.posts()[-1].body["options"] == {"num_predict": 2}
    assert body["choices"][0]["finish_reason"] == "length"
    events = await events_of(adapter, chat({"max_tokens": 2}, stream=True))
    assert [c["choices"][0]["finish_reason"] for c in events[:-2]][-1] == "length"


async def test_an_error_line_mid_stream_raises_with_ollamas_message(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    fake.error_after = 2
    with pytest.raises(
        UpstreamProtocolError, match="an error was encountered while running the model"
    ):
        await events_of(adapter, chat({}, stream=True))


async def test_unknown_model_is_ollamas_404_with_its_message(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    for send in (adapter.send, adapter.open_stream):
        with pytest.raises(UpstreamStatus) as caught:
            await send(chat({}, model="nope", stream=send == adapter.open_stream))
        assert caught.value.upstream_status == 404 and not caught.value.retryable
        assert "model 'nope' not found" in caught.value.message


async def test_server_errors_are_retryable(fake: FakeOllama, adapter: OllamaAdapter) -> None:
    fake.fail_status = 500
    with pytest.raises(UpstreamStatus) as caught:
        await adapter.send(chat({}))
    assert caught.value.retryable and "llama runner process has terminated" in caught.value.message


async def test_a_dead_ollama_is_a_connect_error_and_unavailable(
    session: aiohttp.ClientSession,
) -> None:
    provider = Provider(
        kind="ollama", base_url=f"http://127.0.0.1:{free_port()}", timeouts=Timeouts(connect=1)
    )
    dead = OllamaAdapter("ollama", provider, session)
    with pytest.raises(UpstreamConnectError):
        await dead.send(chat({}))
    with pytest.raises(UpstreamConnectError):
        await dead.open_stream(chat({}, stream=True))
    probe = await dead.probe()
    assert not probe.available and "cannot connect" in probe.detail


async def test_a_silent_stream_times_out_per_read(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.line_delay = 0.5
    provider = Provider(kind="ollama", base_url=fake.url, timeouts=Timeouts(first_byte=2, idle=0.1))
    slow = OllamaAdapter("ollama", provider, session)
    with pytest.raises(UpstreamTimeout):
        await events_of(slow, chat({}, stream=True))


async def test_probe_reads_the_version(adapter: OllamaAdapter) -> None:
    probe = await adapter.probe()
    assert probe.available and "0.12.6" in probe.detail


async def test_completions_use_generate_in_raw_mode(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    req = request(Operation.COMPLETIONS, {"prompt": "Once upon", "max_tokens": 50, "stop": ["\n"]})
    body = json.loads((await adapter.send(req)).body)
    assert fake.posts("/api/generate")[-1].body == {
        "model": "llama3.2",
        "prompt": "Once upon",
        "raw": True,
        "stream": False,
        "options": {"num_predict": 50, "stop": ["\n"]},
    }
    assert body["object"] == "text_completion" and body["id"] == "cmpl-req42"
    assert body["choices"] == [
        {"text": "echo: Once upon", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4

    events = await events_of(
        adapter, request(Operation.COMPLETIONS, {"prompt": ["Once upon"]}, stream=True)
    )
    *chunks, usage, done = events
    assert done == "[DONE]" and usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert "".join(c["choices"][0]["text"] for c in chunks) == "echo: Once upon"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_embeddings_as_floats_and_as_base64(fake: FakeOllama, adapter: OllamaAdapter) -> None:
    req = request(
        Operation.EMBEDDINGS, {"input": ["a cat", "a dog"], "dimensions": 4}, model="all-minilm"
    )
    body = json.loads((await adapter.send(req)).body)
    assert fake.posts("/api/embed")[-1].body == {
        "model": "all-minilm",
        "input": ["a cat", "a dog"],
        "dimensions": 4,
    }
    assert body["object"] == "list" and body["model"] == "all-minilm"
    assert [(d["object"], d["index"], len(d["embedding"])) for d in body["data"]] == [
        ("embedding", 0, 4),
        ("embedding", 1, 4),
    ]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    req = request(
        Operation.EMBEDDINGS, {"input": "a cat", "encoding_format": "base64"}, model="all-minilm"
    )
    packed = json.loads((await adapter.send(req)).body)["data"][0]["embedding"]
    floats = msgspec.json.decode(json.dumps(body["data"][0]["embedding"]))
    decoded = list(memoryview(base64.b64decode(packed)).cast("f"))
    assert len(decoded) == fake.embedding_dim and math.isclose(
        sum(x * x for x in decoded), 1, rel_tol=1e-5
    )
    assert len(floats) == 4
    with pytest.raises(BadRequest):
        await adapter.send(request(Operation.EMBEDDINGS, {"input": [[1, 2, 3]]}))


async def test_load_waits_for_the_model_and_loaded_models_lists_it(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    assert await adapter.loaded_models() == []
    await adapter.load("llama3.2", keep_alive=-1)
    sent = fake.posts("/api/generate")[-1].body
    assert sent == {"model": "llama3.2", "stream": False, "keep_alive": -1}  # no prompt: load only
    [loaded] = await adapter.loaded_models()
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == "llama3.2:latest" and loaded.size > 0 and loaded.size_vram == loaded.size
    assert isinstance(loaded.expires_at, datetime) and loaded.expires_at.year > 2200  # for ever
    await adapter.load("llava", keep_alive="10m")
    assert [m.name for m in await adapter.loaded_models()] == ["llama3.2:latest", "llava:latest"]


async def test_unload_returns_once_ollama_really_freed_the_model(
    fake: FakeOllama, adapter: OllamaAdapter
) -> None:
    await adapter.load("llama3.2")
    fake.unload_delay = 0.3  # Ollama keeps listing it while it frees the memory
    await adapter.unload("llama3.2")
    assert fake.posts("/api/generate")[-1].body == {
        "model": "llama3.2",
        "keep_alive": 0,
        "stream": False,
    }
    assert await adapter.loaded_models() == []
    assert len([r for r in fake.requests if r.path == "/api/ps"]) >= 2  # it polled

    await adapter.load("llama3.2")
    fake.unload_delay = 5
    with pytest.raises(UpstreamTimeout):
        await adapter.unload("llama3.2", wait=0.2)


async def test_load_of_an_unknown_model_is_a_404(adapter: OllamaAdapter) -> None:
    with pytest.raises(UpstreamStatus) as caught:
        await adapter.load("nope")
    assert caught.value.upstream_status == 404


async def test_the_providers_keep_alive_goes_with_every_request(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    pinned = OllamaAdapter(
        "o", Provider(kind="ollama", base_url=fake.url), session, keep_alive="1h"
    )
    await pinned.send(chat({"keep_alive": 0}))  # the operator's policy beats the client's
    assert fake.posts()[-1].body["keep_alive"] == "1h"
    await pinned.load("llava")
    assert fake.posts()[-1].body["keep_alive"] == "1h"


# --- end to end: the openai SDK → turnout → fake Ollama ------------------------------------------


@asynccontextmanager
async def gateway(fake: FakeOllama) -> AsyncIterator[RunningGateway]:
    def model(name: str, upstream: str) -> dict[str, Any]:
        return {"name": name, "targets": [{"provider": "ollama", "model": upstream}]}

    raw = {
        "providers": {"ollama": {"kind": "ollama", "base_url": fake.url}},
        "models": [
            model("local", "llama3.2"),
            model("vision", "llava"),
            model("embed", "all-minilm"),
            model("missing", "nope"),
        ],
        "routing": {"retries": 0},
    }
    async with running_gateway(config_of(raw)) as gw:
        yield gw


async def test_e2e_chat_and_stream(fake: FakeOllama) -> None:
    fake.reply = "Hi from Ollama"
    async with gateway(fake) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(model="local", messages=USER)
        assert reply.choices[0].message.content == "Hi from Ollama"
        assert reply.choices[0].finish_reason == "stop" and reply.usage is not None
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

        stream = await client.chat.completions.create(
            model="local",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == "Hi from Ollama"
        )
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 4

        stream = await client.chat.completions.create(model="local", messages=USER, stream=True)
        assert all(c.usage is None for c in [c async for c in stream])


async def test_e2e_tool_calls_non_stream_and_stream(fake: FakeOllama) -> None:
    fake.tool_calls = [("get_weather", {"city": "Paris", "days": 2})]
    async with gateway(fake) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(model="local", messages=USER, tools=[WEATHER])
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}

        stream = await client.chat.completions.create(
            model="local",
            messages=USER,
            tools=[WEATHER],
            stream=True,
        )
        chunks = [c async for c in stream]
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert not any(d.content for d in deltas)
        calls = [tc for d in deltas for tc in d.tool_calls or ()]
        assert len(calls) == 1 and calls[0].index == 0 and calls[0].id
        assert calls[0].function is not None and calls[0].function.name == "get_weather"
        assert json.loads(calls[0].function.arguments or "") == {"city": "Paris", "days": 2}
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


async def test_e2e_tool_result_turn_reaches_ollama_in_its_format(fake: FakeOllama) -> None:
    history: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_ab12",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_ab12", "content": "11 degrees"},
    ]
    fake.reply = "It is 11 degrees in Paris."
    async with gateway(fake) as gw:
        reply = await gw.openai().chat.completions.create(
            model="local", messages=history, tools=[WEATHER]
        )
    assert reply.choices[0].message.content == "It is 11 degrees in Paris."
    sent = fake.posts("/api/chat")[-1].body
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    "id": "call_ab12",
                }
            ],
        },
        {
            "role": "tool",
            "content": "11 degrees",
            "tool_name": "get_weather",
            "tool_call_id": "call_ab12",
        },
    ]
    assert sent["tools"][0]["function"]["name"] == "get_weather"


async def test_e2e_images_travel_as_base64(fake: FakeOllama) -> None:
    content: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    async with gateway(fake) as gw:
        client = gw.openai()
        await client.chat.completions.create(
            model="vision", messages=[{"role": "user", "content": content}]
        )
        sent = fake.posts("/api/chat")[-1].body
        assert sent["model"] == "llava"
        assert sent["messages"] == [{"role": "user", "content": "What is this?", "images": [PNG]}]
        remote: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
        with pytest.raises(openai.BadRequestError, match="data: URLs only"):
            await client.chat.completions.create(
                model="vision", messages=[{"role": "user", "content": remote}]
            )


async def test_e2e_embeddings(fake: FakeOllama) -> None:
    async with gateway(fake) as gw:
        client = gw.openai()
        # The SDK asks for base64 by default and decodes it back to floats.
        result = await client.embeddings.create(model="embed", input=["a cat", "a dog"])
        floats = await client.embeddings.create(
            model="embed", input="a cat", encoding_format="float"
        )
    assert [len(d.embedding) for d in result.data] == [fake.embedding_dim] * 2
    assert result.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    assert result.usage.prompt_tokens == 4 and result.usage.total_tokens == 4


async def test_e2e_completions_stream(fake: FakeOllama) -> None:
    async with gateway(fake) as gw:
        stream = await gw.openai().completions.create(model="local", prompt="Say", stream=True)
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: Say"
    assert fake.posts("/api/generate")[-1].body["raw"] is True


async def test_e2e_unknown_model_is_a_4xx_openai_error_with_ollamas_message(
    fake: FakeOllama,
) -> None:
    async with gateway(fake) as gw:
        client = gw.openai()
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="missing", messages=USER)
        error = caught.value.body
        assert isinstance(error, dict) and "model 'nope' not found" in error["message"]
        assert error["type"] == "invalid_request_error"
        with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
            await client.chat.completions.create(model="missing", messages=USER, stream=True)


async def test_e2e_error_mid_stream_reaches_the_client_in_band(fake: FakeOllama) -> None:
    fake.error_after = 2
    async with gateway(fake) as gw:
        stream = await gw.openai().chat.completions.create(
            model="local", messages=USER, stream=True
        )
        with pytest.raises(openai.APIError, match="an error was encountered"):
            async for _ in stream:
                pass
