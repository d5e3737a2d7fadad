"""The gateway in front of a real llama-server, with the official openai SDK as the client."""

from __future__ import annotations

import json

import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageFunctionToolCall

from gateway.config import Config
from tests.engines.engines import HELLO_TEXT, LlamaServer
from tests.gateway_server import config_of, running_gateway

pytestmark = pytest.mark.engine

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


def gateway_config(hello: LlamaServer, toolcall: LlamaServer) -> Config:
    return config_of(
        {
            "providers": {
                "hello": {"kind": "llamacpp", "base_url": hello.url + "/v1"},
                "toolcall": {"kind": "llamacpp", "base_url": toolcall.url + "/v1"},
            },
            "models": [
                {
                    "name": "local",
                    "aliases": ["gpt-4o-mini"],
                    "local_only": True,
                    "targets": [{"provider": "hello", "model": "tiny-hello"}],
                },
                {"name": "agent", "targets": [{"provider": "toolcall", "model": "tiny-toolcall"}]},
            ],
        }
    )


async def test_non_streaming_reply_and_usage(
    llama_hello: LlamaServer, llama_toolcall: LlamaServer
) -> None:
    async with running_gateway(gateway_config(llama_hello, llama_toolcall)) as gw:
        client = AsyncOpenAI(base_url=gw.v1, api_key="unused")
        reply = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=32
        )
        completion = reply.parse()
        assert completion.choices[0].message.content == HELLO_TEXT
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens == 10
        assert reply.headers["x-turnout-target"] == "hello/tiny-hello"
        assert float(reply.headers["x-turnout-overhead-ms"]) >= 0
        assert reply.headers["x-request-id"]


async def test_streaming_reply_drops_usage_unless_asked(
    llama_hello: LlamaServer, llama_toolcall: LlamaServer
) -> None:
    async with running_gateway(gateway_config(llama_hello, llama_toolcall)) as gw:
        client = AsyncOpenAI(base_url=gw.v1, api_key="unused")
        stream = await client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=32, stream=True
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == HELLO_TEXT
        assert all(c.usage is None for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"

        stream = await client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10

        # The gateway counted the tokens of both streams, asked-for usage or not.
        metrics = await client.with_options(base_url=gw.url).get("/metrics", cast_to=str)
        assert 'turnout_tokens_total{model="local",type="completion"} 20.0' in metrics


async def test_tool_call_arrives_intact(
    llama_hello: LlamaServer, llama_toolcall: LlamaServer
) -> None:
    async with running_gateway(gateway_config(llama_hello, llama_toolcall)) as gw:
        client = AsyncOpenAI(base_url=gw.v1, api_key="unused")
        completion = await client.chat.completions.create(
            model="agent",
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=[WEATHER_TOOL],
            max_tokens=64,
        )
        message = completion.choices[0].message
        assert completion.choices[0].finish_reason == "tool_calls"
        # llama.cpp says content "" here; clients get OpenAI's null.
        assert message.content is None
        assert message.tool_calls
        first_call = message.tool_calls[0]
        assert isinstance(first_call, ChatCompletionMessageFunctionToolCall)
        assert first_call.function.name == "get_weather"
        assert json.loads(first_call.function.arguments) == {"city": "Paris"}

        stream = await client.chat.completions.create(
            model="agent",
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=[WEATHER_TOOL],
            max_tokens=64,
            stream=True,
        )
        name, arguments, finish = "", "", None
        async for chunk in stream:
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    name += call.function.name or "" if call.function else ""
                    arguments += call.function.arguments or "" if call.function else ""
                finish = choice.finish_reason or finish
        assert (
            name == "get_weather"
            and json.loads(arguments) == {"city": "Paris"}
            and finish == "tool_calls"
        )
