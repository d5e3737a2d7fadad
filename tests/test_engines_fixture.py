"""The engine test fixtures themselves: tiny models + a real llama-server, no gateway involved.

These pin down what the gateway's integration tests rely on: the scripted models answer
exactly their script (content, tool call, stream) and the server starts and stops cleanly.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engines.engines import (
    HELLO_TEXT,
    LlamaServer,
    ensure_models,
    get,
    llama_server_binary,
    post_json,
    stream_sse,
)

pytestmark = pytest.mark.engine

GET_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    if llama_server_binary() is None:
        pytest.skip(
            "llama-server not built: run tests/engines/build_llama_server.sh "
            "(or point LLAMA_SERVER_BIN at a binary)"
        )
    pytest.importorskip("gguf", reason="building the tiny models needs the gguf test extra")
    return ensure_models()


@pytest.fixture(scope="module")
def hello_server(models: dict[str, Path]) -> Iterator[LlamaServer]:
    with LlamaServer(models["tiny-hello"]) as server:
        yield server


@pytest.fixture(scope="module")
def toolcall_server(models: dict[str, Path]) -> Iterator[LlamaServer]:
    with LlamaServer(models["tiny-toolcall"]) as server:
        yield server


def test_models_are_cached(models: dict[str, Path]) -> None:
    assert set(models) == {"tiny-random", "tiny-hello", "tiny-toolcall", "tiny-spm"}
    mtimes = {name: path.stat().st_mtime_ns for name, path in models.items()}
    assert ensure_models() == models
    assert {name: path.stat().st_mtime_ns for name, path in models.items()} == mtimes


@pytest.mark.parametrize("temperature", [0.0, 1.0, 2.0])
def test_scripted_reply(hello_server: LlamaServer, temperature: float) -> None:
    url = hello_server.url + "/v1/chat/completions"
    reply = post_json(url, _chat(max_tokens=32, temperature=temperature))
    choice = reply["choices"][0]
    assert choice["message"]["content"] == HELLO_TEXT
    assert choice["finish_reason"] == "stop"
    assert reply["model"] == "tiny"  # the -a alias, whatever the request said
    assert reply["usage"]["completion_tokens"] == 10  # 9 script tokens + EOS


def test_scripted_reply_stream(hello_server: LlamaServer) -> None:
    body = _chat(max_tokens=32, stream=True, stream_options={"include_usage": True})
    chunks = list(stream_sse(hello_server.url + "/v1/chat/completions", body))
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(c["delta"].get("content") or "" for c in choices) == HELLO_TEXT
    assert choices[-1]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 10
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_scripted_tool_call(toolcall_server: LlamaServer) -> None:
    url = toolcall_server.url + "/v1/chat/completions"
    reply = post_json(url, _chat(max_tokens=64, tools=[GET_WEATHER_TOOL]))
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert call["id"]


def test_scripted_tool_call_stream(toolcall_server: LlamaServer) -> None:
    body = _chat(max_tokens=64, tools=[GET_WEATHER_TOOL], stream=True)
    chunks = list(stream_sse(toolcall_server.url + "/v1/chat/completions", body))
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    deltas = [d for c in choices for d in c["delta"].get("tool_calls") or []]
    assert {d["index"] for d in deltas} == {0}
    name = "".join(d.get("function", {}).get("name") or "" for d in deltas)
    arguments = "".join(d.get("function", {}).get("arguments") or "" for d in deltas)
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}
    assert choices[-1]["finish_reason"] == "tool_calls"


def test_without_tools_the_tool_script_is_plain_text(toolcall_server: LlamaServer) -> None:
    reply = post_json(toolcall_server.url + "/v1/chat/completions", _chat(max_tokens=64))
    choice = reply["choices"][0]
    assert choice["message"]["content"].startswith("<tool_call>\n{")
    assert choice["finish_reason"] == "stop"


@pytest.mark.parametrize("name", ["tiny-random", "tiny-spm"])
def test_random_model_serves_and_stops(models: dict[str, Path], name: str) -> None:
    with LlamaServer(models[name], alias=name) as server:
        pid, port = server.pid, server.port
        status, listing = get(server.url + "/v1/models")
        assert status == 200
        assert [m["id"] for m in json.loads(listing)["data"]] == [name]
        reply = post_json(server.url + "/v1/chat/completions", _chat(max_tokens=4))
        assert reply["model"] == name
        assert reply["usage"]["completion_tokens"] <= 4
        assert reply["choices"][0]["finish_reason"] in {"length", "stop"}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_startup_failure_reports_the_log(models: dict[str, Path], tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"definitely not gguf")
    server = LlamaServer(bogus, startup_timeout=30)
    with pytest.raises(RuntimeError, match="exited"):
        server.start()
    assert server.log_path is not None and "not-a-model.gguf" in server.log_text()
