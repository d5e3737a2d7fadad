"""Upstream quirks are fixed inside the adapters, checked against responses recorded from real engines."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import msgspec
import pytest

from adapters.anthropic import AnthropicAdapter
from adapters.base import (
    AdapterRegistry,
    Native,
    Operation,
    UpstreamRequest,
    WireProtocol,
    native_for,
)
from adapters.builtin import default_registry
from adapters.llamacpp import LlamaCppAdapter
from adapters.mlx import MLXAdapter
from adapters.openai_compat import OpenAICompatAdapter
from gateway.config import Provider

SAMPLES = Path(__file__).parent / "fixtures" / "samples"


def sse_events(name: str) -> list[bytes]:
    text = (SAMPLES / name).read_bytes()
    return [e for e in text.split(b"\n\n") if e.strip()]


async def adapter_of(kind: str) -> tuple[object, aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    provider = Provider(kind=kind, base_url="http://127.0.0.1:9/v1")
    return default_registry().create("p", provider, session), session


async def test_llamacpp_tool_call_reply_gets_null_content() -> None:
    adapter, session = await adapter_of("llamacpp")
    assert isinstance(adapter, LlamaCppAdapter)
    raw = (SAMPLES / "llama-chat-scripted-toolcall.json").read_bytes()
    assert json.loads(raw)["choices"][0]["message"]["content"] == ""
    fixed = json.loads(adapter.fix_reply(Operation.CHAT, raw))
    message = fixed["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    # llama.cpp's extras survive; plain replies are passed through untouched (same bytes).
    assert "timings" in fixed
    plain = b'{"choices":[{"message":{"role":"assistant","content":""}}]}'
    assert adapter.fix_reply(Operation.CHAT, plain) is plain
    await session.close()


async def test_mlx_stream_sends_role_once_and_fixes_the_usage_object() -> None:
    adapter, session = await adapter_of("mlx")
    assert isinstance(adapter, MLXAdapter)
    fix = adapter.event_fix(Operation.CHAT)
    assert fix is not None
    events = [e for e in sse_events("mlx-chat-stream.sse") if not e.startswith(b":")]
    fixed = [fix(e) for e in events]
    chunks = [json.loads(e[6:]) for e in fixed if e and e != b"data: [DONE]"]
    roles = [c["choices"][0]["delta"].get("role") for c in chunks if c["choices"]]
    assert roles[0] == "assistant" and all(r is None for r in roles[1:])
    usage = [c for c in chunks if not c["choices"]]
    assert (
        len(usage) == 1
        and usage[0]["object"] == "chat.completion.chunk"
        and usage[0]["usage"]["total_tokens"] > 0
    )
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # The text is unchanged by the fix.
    original = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
        for e in events
        if e != b"data: [DONE]" and json.loads(e[6:])["choices"]
    )
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == original
    )
    assert fixed[-1] == b"data: [DONE]"
    await session.close()


async def test_mlx_tool_call_stream_keeps_the_whole_call() -> None:
    adapter, session = await adapter_of("mlx")
    fix = adapter.event_fix(Operation.CHAT)  # type: ignore[attr-defined]
    events = [
        fix(e)
        for e in sse_events("mlx-chat-scripted-toolcall-stream.sse")
        if not e.startswith(b":")
    ]
    first = json.loads(events[0][6:])
    call = first["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    final = json.loads(events[1][6:])
    assert (
        final["choices"][0]["finish_reason"] == "tool_calls"
        and "role" not in final["choices"][0]["delta"]
    )
    await session.close()


async def test_body_rewrite_sets_upstream_model_and_always_asks_for_usage() -> None:
    adapter, session = await adapter_of("openai")
    assert isinstance(adapter, OpenAICompatAdapter)
    fields = msgspec.json.decode(
        b'{"model":"logical","messages":[],"stream":true,"stream_options":{"include_usage":false,"x":1},"seed":4}',
        type=dict[str, msgspec.Raw],
    )
    body = json.loads(
        adapter.encode_body(UpstreamRequest(Operation.CHAT, fields, "upstream-name", True, "rid"))
    )
    assert body["model"] == "upstream-name"
    assert body["stream_options"] == {"include_usage": True, "x": 1}
    assert body["seed"] == 4
    fields.pop("stream_options")
    body = json.loads(
        adapter.encode_body(UpstreamRequest(Operation.CHAT, fields, "u", False, "rid"))
    )
    assert "stream_options" not in body
    await session.close()


def test_unknown_adapter_kind_names_the_known_ones() -> None:
    registry = default_registry()
    with pytest.raises(KeyError, match=r"unknown adapter kind 'nope'.*llamacpp"):
        registry.create("x", Provider(kind="nope", base_url="http://a/v1"), None)  # type: ignore[arg-type]
    assert {"openai", "llamacpp", "mlx", "deepseek", "vllm", "lmstudio"} <= set(registry.kinds())


async def test_openai_itself_gets_max_completion_tokens_others_keep_max_tokens() -> None:
    fields = msgspec.json.decode(
        b'{"model":"m","messages":[],"max_tokens":64}', type=dict[str, msgspec.Raw]
    )
    request = UpstreamRequest(Operation.CHAT, fields, "gpt-5", False, "rid")
    openai, session = await adapter_of("openai")
    body = json.loads(openai.encode_body(request))  # type: ignore[attr-defined]
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    vllm, _ = await adapter_of("vllm")
    assert json.loads(vllm.encode_body(request))["max_tokens"] == 64  # type: ignore[attr-defined]
    await session.close()
    await _.close()


async def test_llamacpp_asks_for_prompt_progress_only_on_translated_streams() -> None:
    adapter, session = await adapter_of("llamacpp")
    assert isinstance(adapter, LlamaCppAdapter)
    fields = {"messages": msgspec.Raw(b'[{"role":"user","content":"hi"}]')}
    plain = UpstreamRequest(Operation.CHAT, fields, "m", True, "r")
    translated = UpstreamRequest(Operation.CHAT, fields, "m", True, "r", translated=True)
    # Said on the request, not read from the type of its fields.
    assert b"return_progress" not in adapter.encode_body(plain)
    assert json.loads(adapter.encode_body(translated))["return_progress"] is True
    await session.close()


async def test_a_native_body_goes_only_to_an_adapter_that_speaks_its_protocol() -> None:
    native = Native(WireProtocol.ANTHROPIC, b'{"model":"x","messages":[]}', {})
    speaker, session = await adapter_of("anthropic")
    other, other_session = await adapter_of("llamacpp")
    assert isinstance(speaker, AnthropicAdapter) and isinstance(other, LlamaCppAdapter)
    assert native_for(speaker, native) is native
    assert native_for(other, native) is None
    assert native_for(speaker, None) is None
    await session.close()
    await other_session.close()


def test_every_builtin_kind_is_registered_from_its_own_module() -> None:
    # One module per kind, one entry in adapters/builtin.py: nothing else lists them.
    kinds = default_registry().kinds()
    assert {"openai", "llamacpp", "mlx", "ollama", "anthropic"} <= set(kinds)
    registry = AdapterRegistry()
    registry.register(
        "third-party", lambda name, provider, session: OpenAICompatAdapter(name, provider, session)
    )
    assert registry.kinds() == ["third-party"]
