"""Broken 200s and dripping bodies are upstream failures, found before the answer is committed.

A fault upstream on loopback answers 200 with what no client can use (JSON cut short, a
proxy's HTML page, something that is not an event stream) or drips its body a byte at a
time. Through every ingress (OpenAI chat, Anthropic Messages, OpenAI Responses), streamed or
not, each falls back to a healthy second target; with no second target the client gets a
clean 502 (504 for the deadline) in its own protocol's envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import anthropic
import openai
import pytest
from aiohttp import web
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": "ping"}]
FAULTS = ("truncated-json", "html", "invalid-sse")
HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
CUT_REPLY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"ro'
CUT_EVENT = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"delta":{"con'


class FaultUpstream:
    """Answers every POST with the fault its request's ``model`` names; GETs answer 200 ``{}``."""

    def __init__(self) -> None:
        self.posts = 0
        self.drip_seconds = 0.05
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FaultUpstream:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._post)
        app.router.add_route("GET", "/{tail:.*}", self._get)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0", "data": []})

    async def _post(self, request: web.Request) -> web.StreamResponse:
        self.posts += 1
        body = await request.json()
        fault, stream = body.get("model"), bool(body.get("stream"))
        if fault == "html":
            return web.Response(body=HTML, content_type="text/html")
        if fault == "truncated-json" and not stream:
            return web.Response(body=CUT_REPLY, content_type="application/json")
        if fault == "invalid-sse" and not stream:
            # An event stream where a JSON body was asked for.
            return web.Response(
                body=b"data: {}\n\ndata: [DONE]\n\n", content_type="application/json"
            )
        if fault == "drip":
            return await self._drip(request)
        if fault == "no-headers":
            await asyncio.sleep(3600)  # cancelled when the gateway gives up on the connection
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        first = CUT_EVENT + b"\n\n" if fault == "truncated-json" else b"this is not SSE\n\n"
        await response.write(first + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        """A byte at a time, for ever: each read is quick, the whole answer never comes."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await response.write(b"{")
            while True:
                await asyncio.sleep(self.drip_seconds)
                await response.write(b" ")
        return response


@pytest.fixture
async def fault() -> AsyncIterator[FaultUpstream]:
    async with FaultUpstream() as upstream:
        yield upstream


@pytest.fixture
async def good() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def faulty_gateway(
    fault: FaultUpstream, good: FakeOpenAI, kind: str = "openai"
) -> AbstractAsyncContextManager[RunningGateway]:
    """``with-<fault>``: the fault, then the healthy target; ``solo-<fault>``: the fault alone."""
    models = []
    for name in (*FAULTS, "drip", "no-headers"):
        bad = {"provider": "bad", "model": name}
        models.append(
            {"name": f"with-{name}", "targets": [bad, {"provider": "good", "model": "ok"}]}
        )
        models.append({"name": f"solo-{name}", "targets": [bad]})
    timeouts = {"connect": 0.3, "first_byte": 0.5, "idle": 0.5}
    raw = {
        "providers": {
            "bad": {
                "kind": kind,
                "base_url": fault.url + "/v1",
                "local": True,
                "timeouts": timeouts,
            },
            "good": {"kind": "openai", "base_url": good.url, "local": True},
        },
        "models": models,
        "routing": {"retries": 0, "cooldown_seconds": 0},
        "server": {"keepalive_seconds": 30},
    }
    return running_gateway(config_of(raw))


def anthropic_client(gw: RunningGateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)


# --- OpenAI chat (the passthrough) ----------------------------------------------------------------


async def test_chat_broken_200s_fall_back_to_the_healthy_target(
    fault: FaultUpstream, good: FakeOpenAI
) -> None:
    async with faulty_gateway(fault, good) as gw:
        client = gw.openai()
        for name in FAULTS:
            raw = await client.chat.completions.with_raw_response.create(
                model=f"with-{name}", messages=USER
            )
            assert raw.parse().choices[0].message.content == "echo: ping", name
            assert raw.headers["x-turnout-target"] == "good/ok", name
            assert raw.headers["x-turnout-attempts"] == "2", name
            stream = await client.chat.completions.create(
                model=f"with-{name}", messages=USER, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "echo: ping", name
    assert fault.posts == 2 * len(FAULTS)


async def test_chat_broken_200s_without_a_second_target_are_a_clean_502(
    fault: FaultUpstream, good: FakeOpenAI
) -> None:
    async with faulty_gateway(fault, good) as gw:
        client = gw.openai()
        for name in FAULTS:
            for stream in (False, True):
                with pytest.raises(openai.APIStatusError) as caught:
                    await client.chat.completions.create(
                        model=f"solo-{name}", messages=USER, stream=stream
                    )
                assert caught.value.status_code == 502, (name, stream)
                error = caught.value.body
                assert isinstance(error, dict), (name, stream)
                assert error["code"] == "upstream_protocol_error", (name, stream, error)
                assert error["type"] == "upstream_error"


# --- Anthropic Messages (translated) ------------------------------------------------------------


async def test_messages_broken_200s_fall_back_before_the_answer_is_committed(
    fault: FaultUpstream, good: FakeOpenAI
) -> None:
    async with faulty_gateway(fault, good) as gw:
        client = anthropic_client(gw)
        for name in FAULTS:
            message = await client.messages.create(
                model=f"with-{name}",
                max_tokens=64,
                messages=CLAUDE_USER,
            )
            assert message.content[0].type == "text", name
            assert message.content[0].text == "echo: ping", name
            text = ""
            async with client.messages.stream(
                model=f"with-{name}",
                max_tokens=64,
                messages=CLAUDE_USER,
            ) as stream:
                async for piece in stream.text_stream:
                    text += piece
            assert text == "echo: ping", name


async def test_messages_broken_200s_without_a_second_target_are_a_clean_anthropic_502(
    fault: FaultUpstream, good: FakeOpenAI
) -> None:
    async with faulty_gateway(fault, good) as gw:
        client = anthropic_client(gw)
        for name in FAULTS:
            for stream in (False, True):
                with pytest.raises(anthropic.APIStatusError) as caught:
                    await client.messages.create(
                        model=f"solo-{name}",
                        max_tokens=64,
                        messages=CLAUDE_USER,
                        stream=stream,
                    )
                assert caught.value.status_code == 502, (name, stream)
                body = caught.value.body
                assert isinstance(body, dict) and body["type"] == "error", (name, stream, body)
                assert body["error"]["type"] == "api_error", (name, stream, body)


# --- OpenAI Responses (translated) --------------------------------------------------------------


async def test_responses_broken_200s_fall_back_before_the_answer_is_committed(
    fault: FaultUpstream, good: FakeOpenAI
) -> None:
    async with faulty_gateway(fault, good) as gw:
        client = gw.openai()
        for name in FAULTS:
            response = await client.responses.create(model=f"with-{name}", input="ping")
            assert response.output_text == "echo: ping", name
            stream = await client.responses.create(model=f"with-{name}", input="ping", stream=True)
            kinds = [event.type async for event in stream]
            assert kinds[-1] == "response.completed", (name, kinds)
            assert "error" not in kinds and "response.failed" not in kinds, (name, kinds)


async def test_responses_broken_200s_without_a_second_target_are_a_clean_502(
    fault: FaultUpstream, good: FakeOpenAI
) -> None:
    async with faulty_gateway(fault, good) as gw:
        client = gw.openai()
        for name in FAULTS:
            for stream in (False, True):
                with pytest.raises(openai.APIStatusError) as caught:
                    await client.responses.create(model=f"solo-{name}", input="ping", stream=stream)
                assert caught.value.status_code == 502, (name, stream)
                error = caught.value.body
                assert isinstance(error, dict), (name, stream)
                assert error["code"] == "upstream_protocol_error", (name, stream, error)


# --- the non-stream deadline ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
async def test_a_body_dripping_a_byte_at_a_time_hits_the_whole_answer_deadline(
    fault: FaultUpstream, good: FakeOpenAI, kind: str
) -> None:
    # Each byte comes well inside first_byte (0.5 s), so a per-read timeout never fired and
    # the request hung for as long as the upstream kept dripping.
    async with faulty_gateway(fault, good, kind) as gw:
        client = gw.openai()
        started = time.monotonic()
        raw = await asyncio.wait_for(
            client.chat.completions.with_raw_response.create(model="with-drip", messages=USER),
            timeout=10,
        )
        assert raw.parse().choices[0].message.content == "echo: ping"
        assert raw.headers["x-turnout-target"] == "good/ok"
        with pytest.raises(openai.APIStatusError) as caught:
            await asyncio.wait_for(
                client.chat.completions.create(model="solo-drip", messages=USER), timeout=10
            )
        assert caught.value.status_code == 504
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["code"] == "upstream_timeout"
        # Two deadlines of connect + first_byte (0.8 s) each, with room for a busy machine.
        assert time.monotonic() - started < 8


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
async def test_a_stream_whose_headers_never_come_falls_back_within_connect_plus_first_byte(
    fault: FaultUpstream, good: FakeOpenAI, kind: str
) -> None:
    async with faulty_gateway(fault, good, kind) as gw:
        client = gw.openai()
        started = time.monotonic()
        stream = await asyncio.wait_for(
            client.chat.completions.create(model="with-no-headers", messages=USER, stream=True),
            timeout=10,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "echo: ping"
        assert time.monotonic() - started < 5


def test_fault_bodies_are_what_the_scenarios_say() -> None:
    """The fixtures themselves: cut JSON really is cut, so the tests above test something."""
    for data in (CUT_REPLY, CUT_EVENT[len(b"data: ") :], HTML):
        with pytest.raises(json.JSONDecodeError):
            json.loads(data)
