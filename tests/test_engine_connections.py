"""Kept-alive connections to local engines never fail a healthy engine.

An engine may close a pooled connection in the very instant the gateway reuses it
(llama-server advertises ``Keep-Alive: timeout=5, max=100``). The request then fails before
any response byte; it is resent at once on a new connection, with no retry, no cooldown and
no fallback, and counted in ``turnout_upstream_reconnects_total``. A move from a local target
to a cloud one is never silent: a response header, a WARNING naming both, a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from adapters.base import Operation
from adapters.connections import PoolConnector, sibling_session
from adapters.keepalive import ENGINE_KEEPALIVE_SECONDS
from gateway.forwarder import Trace
from gateway.state import GatewayState
from gateway.wire import decode_request
from tests.engines.engines import HELLO_TEXT, LlamaServer, llama_server_binary
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]


def _reply(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "pong"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


def _events(model: str) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model}
    deltas = [
        {"index": 0, "delta": {"role": "assistant", "content": "pong"}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "stop"},
    ]
    events = [b"data: " + json.dumps({**chunk, "choices": [d]}).encode() for d in deltas]
    return b"\n\n".join([*events, b"data: [DONE]"]) + b"\n\n"


class KeepAliveCloser:
    """An OpenAI-style engine on loopback that answers ``per_connection`` requests on each
    connection, keeps it open as HTTP/1.1 keep-alive, and closes it unanswered when the next
    request arrives on it: exactly what the gateway sees when an engine closes a pooled
    connection in the instant it is reused, only deterministic."""

    def __init__(self, per_connection: int = 1) -> None:
        self.per_connection = per_connection
        self.connections = 0
        self.answered = 0
        self.dropped = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> KeepAliveCloser:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?i)content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(match.group(1))) if match else b""
                if served == self.per_connection:
                    self.dropped += 1
                    return  # closes the connection, no response byte
                served += 1
                self.answered += 1
                writer.write(_answer(head, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def _answer(head: bytes, body: bytes) -> bytes:
    if not head.startswith(b"POST"):
        return _http(b"application/json", b'{"object":"list","data":[]}')
    request = json.loads(body)
    model = request.get("model", "")
    if request.get("stream"):
        return _http(b"text/event-stream", _events(model))
    return _http(b"application/json", _reply(model))


def _http(content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n\r\n%s" % (content_type, len(body), body)
    )


@pytest.fixture
async def cloud() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def engine_and_cloud(
    engine_url: str, cloud: FakeOpenAI, **models: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    """Model ``m``: the local engine first, the cloud at a lower priority (``agent-coder``'s shape)."""
    raw = {
        "providers": {
            "engine": {"kind": "openai", "base_url": engine_url, "local": True},
            "cloud": {"kind": "openai", "base_url": cloud.url, "local": False},
        },
        "models": [
            {
                "name": "m",
                "targets": [
                    {"provider": "engine", "model": "tiny"},
                    {"provider": "cloud", "model": "ok", "priority": 1},
                ],
                **models,
            }
        ],
        "routing": {"retries": 0, "cooldown_seconds": 30},
    }
    return running_gateway(config_of(raw))


def cloud_posts(cloud: FakeOpenAI) -> int:
    return sum(1 for r in cloud.requests if r.method == "POST")


async def metrics_text(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        return await response.text()


def counter(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- the pooled connection the engine closed -----------------------------------------------------


async def test_a_reused_connection_closed_by_the_engine_is_resent_without_failing_the_engine(
    cloud: FakeOpenAI,
) -> None:
    async with KeepAliveCloser() as engine, engine_and_cloud(engine.url, cloud) as gw:
        client = gw.openai()
        rounds = 6
        for _ in range(rounds):
            raw = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
            assert raw.parse().choices[0].message.content == "pong"
            assert raw.headers["x-turnout-target"] == "engine/tiny"
            assert "x-turnout-attempts" not in raw.headers
            assert "x-turnout-fallback" not in raw.headers
            stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "pong"
        text = await metrics_text(gw)
        state: GatewayState = gw.app.state["gateway"]
        engine_state = state.book.state("engine/tiny")
        assert engine_state.consecutive_failures == 0 and engine_state.cooling_until == 0.0
    assert cloud_posts(cloud) == 0
    # Every request after the first found its pooled connection closed, and went out again.
    reconnects = counter(text, "turnout_upstream_reconnects_total", provider="engine")
    assert reconnects >= 2 * rounds - 1
    assert reconnects == engine.dropped
    assert engine.answered >= 2 * rounds
    assert counter(text, "turnout_fallbacks_total", model="m") == 0
    assert "upstream_protocol_error" not in text


async def test_a_new_connection_closed_before_answering_is_a_real_failure_and_a_visible_cloud_move(
    cloud: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="turnout.forwarder")
    async with (
        KeepAliveCloser(per_connection=0) as engine,
        engine_and_cloud(engine.url, cloud) as gw,
    ):
        raw = await gw.openai().chat.completions.with_raw_response.create(model="m", messages=USER)
        text = await metrics_text(gw)
    assert raw.parse().choices[0].message.content == "echo: ping"
    assert raw.headers["x-turnout-target"] == "cloud/ok"
    assert raw.headers["x-turnout-fallback"] == "engine/tiny failed; served by cloud cloud/ok"
    # Not a stale pooled connection: never resent, so one drop per request (the probe's
    # GET was retried by aiohttp itself, as it may for GETs).
    assert counter(text, "turnout_upstream_reconnects_total", provider="engine") == 0
    assert (
        counter(
            text,
            "turnout_cloud_fallbacks_total",
            model="m",
            local_provider="engine",
            cloud_provider="cloud",
        )
        == 1
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("engine/tiny" in w and "cloud/ok" in w for w in warnings), warnings


async def test_local_only_keeps_its_guarantee_when_the_engine_drops_connections(
    cloud: FakeOpenAI,
) -> None:
    async with (
        KeepAliveCloser(per_connection=0) as engine,
        engine_and_cloud(engine.url, cloud, local_only=True) as gw,
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.openai().chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 502
    assert cloud_posts(cloud) == 0


# --- keep-alive shorter than the engine's ----------------------------------------------------------


async def test_local_providers_get_a_pool_that_lets_go_of_idle_connections_first(
    cloud: FakeOpenAI,
) -> None:
    assert ENGINE_KEEPALIVE_SECONDS < 5  # llama-server's and uvicorn's Keep-Alive timeout
    async with KeepAliveCloser() as engine, engine_and_cloud(engine.url, cloud) as gw:
        state: GatewayState = gw.app.state["gateway"]
        engine_session = state.engine_session
        assert engine_session is not None and engine_session is not state.session
        assert state.adapters["engine"]._session is engine_session  # type: ignore[attr-defined]
        assert state.adapters["cloud"]._session is state.session  # type: ignore[attr-defined]
        # Same settings as the main session (headers asked of every upstream included).
        assert state.session is not None
        assert dict(engine_session.headers) == dict(state.session.headers)


async def test_sibling_session_closes_idle_connections_after_its_keepalive() -> None:
    async with KeepAliveCloser(per_connection=100) as engine:
        base = aiohttp.ClientSession(connector=PoolConnector(), headers={"X-Probe": "1"})
        short = sibling_session(base, keepalive_seconds=0.2)
        try:
            for _ in range(2):
                async with short.get(engine.url + "/models") as response:
                    await response.read()
            assert engine.connections == 1  # back to back: reused
            await asyncio.sleep(0.5)
            async with short.get(engine.url + "/models") as response:
                await response.read()
            assert engine.connections == 2  # idle past its keep-alive: a new connection
            assert short.headers["X-Probe"] == "1"
        finally:
            await short.close()
            await base.close()


# --- a real llama-server role ------------------------------------------------------------------------


def _role(model: Path) -> dict[str, Any]:
    command = [str(llama_server_binary()), "-m", "${MODEL}", "--host", "${HOST}", "--port"]
    command += ["${PORT}", "-c", "${CTX}", "--jinja", "--no-webui", "-a", "${ROLE}"]
    command += ["-np", "2", "-t", "1"]
    return {"engine": "llamacpp", "model": str(model), "command": command}


@pytest.mark.engine
async def test_back_to_back_streams_to_a_llama_server_role_never_fall_back(
    tiny_models: dict[str, Path], cloud: FakeOpenAI, tmp_path: Path
) -> None:
    raw = {
        "providers": {"cloud": {"kind": "openai", "base_url": cloud.url, "local": False}},
        "roles": {"fast": _role(tiny_models["tiny-hello"])},
        "models": [
            {
                "name": "agent-coder",
                "targets": [{"role": "fast"}, {"provider": "cloud", "model": "ok", "priority": 1}],
            }
        ],
        "engines": {"log_dir": str(tmp_path)},
        "routing": {"retries": 0},
    }
    async with running_gateway(config_of(raw)) as gw:
        client = gw.openai()
        targets = []
        for _ in range(48):
            response = await client.chat.completions.with_raw_response.create(
                model="agent-coder", messages=USER, max_tokens=16, stream=True
            )
            targets.append(response.headers["x-turnout-target"])
            stream = response.parse()
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == HELLO_TEXT
        text = await metrics_text(gw)
    assert set(targets) == {"role:fast/fast"}
    assert cloud_posts(cloud) == 0
    assert counter(text, "turnout_fallbacks_total", model="agent-coder") == 0
    assert 'outcome="upstream_protocol_error"' not in text
    reconnects = counter(text, "turnout_upstream_reconnects_total", provider="role:fast")
    print(f"llama-server role: 48 streams, {reconnects:g} resent on a new connection")


@pytest.mark.engine
async def test_back_to_back_streams_straight_from_the_forwarder_resend_on_closed_connections(
    llama_hello: LlamaServer, cloud: FakeOpenAI
) -> None:
    # llama-server closes a connection after each streamed answer, yet says Keep-Alive; a
    # request sent the moment the last one ended (no client round trip in between, as under
    # load) lands on the closed connection: straight to the engine, 18 of 40 failed so, and
    # before this fix each such request went to the cloud (37 of 48 here, resent now).
    raw = {
        "providers": {
            "engine": {"kind": "llamacpp", "base_url": llama_hello.url + "/v1", "local": True},
            "cloud": {"kind": "openai", "base_url": cloud.url, "local": False},
        },
        "models": [
            {
                "name": "m",
                "targets": [
                    {"provider": "engine", "model": "tiny-hello"},
                    {"provider": "cloud", "model": "ok", "priority": 1},
                ],
            }
        ],
        "routing": {"retries": 0},
    }
    body = json.dumps({"model": "m", "messages": USER, "max_tokens": 2, "stream": True})
    async with running_gateway(config_of(raw)) as gw:
        state: GatewayState = gw.app.state["gateway"]
        model = state.models.resolve("m")
        assert model is not None
        request = decode_request(Operation.CHAT, body.encode())
        for i in range(40):
            trace = Trace()
            opened = await state.forwarder.open_stream(model, request, f"r{i}", trace)
            try:
                events = [opened.first, *[event async for event in opened.events]]
            finally:
                await opened.aclose()  # gives back the target too
            assert events[-1] == b"data: [DONE]\n\n"
            assert trace.attempts == 1 and trace.target is not None
            assert trace.target.provider == "engine"
        text = await metrics_text(gw)
    assert cloud_posts(cloud) == 0
    assert 'outcome="upstream_protocol_error"' not in text
    reconnects = counter(text, "turnout_upstream_reconnects_total", provider="engine")
    print(f"llama-server, 40 back-to-back streams: {reconnects:g} resent on a new connection")
