"""mlx_lm.server as a turnout role: started by the gateway, its quirks fixed, swapped with llama.cpp.

MLX runs on Linux too (CPU wheels); tests/engines/setup_mlx.sh installs it in its own venv and
these tests skip, quoting the reason, wherever that install did not work.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from tests.engines.engines import HELLO_TEXT, mlx_server_binary, mlx_unavailable
from tests.gateway_server import RunningGateway
from tests.test_engines import alive, engines_config, get, post, role

pytestmark = pytest.mark.engine

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
WEATHER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}
]
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
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


@pytest.fixture(scope="session")
def mlx_models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    """The tiny MLX model directories (the vocab comes with llama-server, hence tiny_models)."""
    if mlx_server_binary() is None:
        pytest.skip(mlx_unavailable())
    from tests.engines.tiny_mlx import ensure_mlx_models

    return ensure_mlx_models()


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # mlx_lm.server lists the Hugging Face cache in /v1/models and fails if it does not exist.
    return tmp_path_factory.mktemp("hf-cache")


def mlx_role(model: Path, hf_cache: Path, **extra: Any) -> dict[str, Any]:
    server = str(mlx_server_binary())
    return {
        "engine": "mlx",
        "model": str(model),
        "command": [server, "--model", "${MODEL}", "--host", "${HOST}", "--port", "${PORT}"],
        # Offline: a model name it does not know must fail fast, not go to the hub.
        "env": {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache)},
        "start_timeout_seconds": 60,
        **extra,
    }


@asynccontextmanager
async def mlx_gateway(
    mlx_models: dict[str, Path], hf_cache: Path, log_dir: Path, **roles: Any
) -> AsyncIterator[RunningGateway]:
    """A gateway with MLX roles "hello" and "coder" (scripted tool call), plus `roles`."""
    mlx = {
        "hello": mlx_role(mlx_models["tiny-hello"], hf_cache),
        "coder": mlx_role(mlx_models["tiny-toolcall"], hf_cache),
    }
    async with engines_config({**mlx, **roles}, log_dir=str(log_dir)) as gw:
        yield gw


async def test_turnout_starts_mlx_and_the_sdk_gets_the_scripted_reply(
    mlx_models: dict[str, Path], hf_cache: Path, tmp_path: Path
) -> None:
    async with mlx_gateway(mlx_models, hf_cache, tmp_path) as gw:
        reply = await gw.openai().chat.completions.with_raw_response.create(
            model="hello", messages=USER, max_tokens=32
        )
        completion = reply.parse()
        assert completion.choices[0].message.content == HELLO_TEXT
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens == 10
        assert reply.headers["x-turnout-role"] == "hello"

        _, status = await get(gw, "/engine/status")
        engine = status["engines"]["hello"]
        assert status["role"] == "hello" and engine["state"] == "ready"
        assert alive(engine["pid"])
        assert (
            f"starting: {mlx_server_binary()} --model {mlx_models['tiny-hello']}"
            in (tmp_path / "hello.log").read_text()
        )


async def test_mlx_stream_is_fixed_to_openai_shape(
    mlx_models: dict[str, Path], hf_cache: Path, tmp_path: Path
) -> None:
    async with mlx_gateway(mlx_models, hf_cache, tmp_path) as gw:
        stream = await gw.openai().chat.completions.create(
            model="hello",
            messages=USER,
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    # mlx_lm.server repeats delta.role in every chunk and calls its usage chunk
    # "chat.completion"; clients must see neither.
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]
    assert chunks[0].choices and chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == HELLO_TEXT
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "stop"
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 10


async def test_mlx_tool_call_reaches_the_client(
    mlx_models: dict[str, Path], hf_cache: Path, tmp_path: Path
) -> None:
    async with mlx_gateway(mlx_models, hf_cache, tmp_path) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(
            model="coder", messages=WEATHER, tools=[WEATHER_TOOL], max_tokens=64
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.type == "function" and call.id
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}

        stream = await client.chat.completions.create(
            model="coder", messages=WEATHER, tools=[WEATHER_TOOL], max_tokens=64, stream=True
        )
        name, arguments, finish = "", "", None
        async for chunk in stream:
            for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                assert delta_call.index == 0
                if delta_call.function is not None:
                    name += delta_call.function.name or ""
                    arguments += delta_call.function.arguments or ""
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert (name, json.loads(arguments), finish) == (
            "get_weather",
            {"city": "Paris"},
            "tool_calls",
        )


async def test_swaps_between_mlx_and_llamacpp_roles(
    mlx_models: dict[str, Path],
    hf_cache: Path,
    tiny_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    llama = role(tiny_models["tiny-toolcall"])
    async with mlx_gateway(mlx_models, hf_cache, tmp_path, llama=llama) as gw:
        client = gw.openai()
        first = await client.chat.completions.create(model="hello", messages=USER, max_tokens=32)
        assert first.choices[0].message.content == HELLO_TEXT
        mlx_pid = (await get(gw, "/engine/status"))[1]["engines"]["hello"]["pid"]

        called = await client.chat.completions.create(
            model="llama", messages=WEATHER, tools=[WEATHER_TOOL], max_tokens=64
        )
        (call,) = called.choices[0].message.tool_calls or []
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        _, status = await get(gw, "/engine/status")
        assert status["role"] == "llama" and status["engines"]["hello"]["state"] == "stopped"
        assert not alive(mlx_pid), "the evicted mlx_lm.server is still running"

        status_code, body = await post(gw, "/engine/switch/hello?wait=true")
        assert (status_code, body["from"], body["to"]) == (200, "llama", "hello")
        again = await client.chat.completions.create(model="hello", messages=USER, max_tokens=32)
        assert again.choices[0].message.content == HELLO_TEXT
        _, status = await get(gw, "/engine/status")
        assert status["engines"]["llama"]["state"] == "stopped"
        assert status["engines"]["hello"]["last_swap_seconds"] > 0
