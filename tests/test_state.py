"""The gateway's state: wired when the app is built, opened whole in the lifespan, closed after."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from adapters.base import Operation
from adapters.builtin import default_registry
from gateway.app import INGRESS, create_app
from gateway.errors import PluginError
from gateway.forwarder import Trace
from gateway.state import GatewayState, Wiring
from gateway.wire import decode_request
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import config_of, running_gateway


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def wiring_of(fake: FakeOpenAI, **sections: Any) -> Wiring:
    raw = {
        "providers": {"up": {"kind": "openai", "base_url": fake.url}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
        **sections,
    }
    return Wiring.of(config_of(raw), default_registry())


def threads() -> set[str]:
    # The loop's default executor keeps its threads until the loop closes: not ours to stop.
    return {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}


async def test_open_builds_a_gateway_that_answers_and_close_lets_go_of_it(
    fake: FakeOpenAI,
) -> None:
    wiring = wiring_of(fake)
    state = await GatewayState.open(wiring)
    try:
        # The parts built from the config are the ones the app was mounted with.
        assert state.auth is wiring.auth and state.plugins is wiring.plugins
        assert state.metrics is wiring.metrics and state.recent is wiring.recent
        # None by nature, not for lack of a start: no local roles here.
        assert state.supervisor is None and state.kv_cache is None
        assert state.usage is not None and set(state.adapters) == {"up"}
        model = state.models.resolve("chat")
        assert model is not None
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        request = decode_request(Operation.CHAT, msgspec.json.encode(body))
        reply = await state.forwarder.send(model, request, "r1", Trace())
        assert b"echo: hi" in reply.body
    finally:
        await state.close()
    assert state.session.closed and state.engine_session.closed


async def test_the_running_state_is_never_swapped_piecemeal(fake: FakeOpenAI) -> None:
    state = await GatewayState.open(wiring_of(fake))
    try:
        with pytest.raises(dataclasses.FrozenInstanceError):
            state.forwarder = state.forwarder  # type: ignore[misc]
    finally:
        await state.close()


async def test_a_start_that_fails_leaves_no_thread_to_keep_the_process_alive(
    fake: FakeOpenAI,
) -> None:
    before = threads()
    broken = {"registry": [{"id": "t", "executor": "shell", "target": "x"}]}
    # The tools plugin fails in startup: after the key cache and the usage log opened.
    wiring = wiring_of(fake, plugins={"enabled": ["tools"]}, tools=broken)
    with pytest.raises(PluginError, match="unknown executor 'shell'"):
        await GatewayState.open(wiring)
    for _ in range(500):
        if threads() <= before:
            break
        await asyncio.sleep(0.01)
    assert threads() <= before


async def test_every_ingress_path_is_served_once_the_gateway_runs(fake: FakeOpenAI) -> None:
    """Each path mounted before the lifespan gets its endpoint: a bad body is the protocol's
    own 400, never the 503 of a slot left empty."""
    async with running_gateway(wiring_of(fake).config) as gw, aiohttp.ClientSession() as session:
        for path in INGRESS:
            async with session.post(gw.url + path, data=b"[]") as response:
                assert response.status == 400, path
                assert "error" in await response.json(), path


async def test_a_request_before_the_lifespan_ran_is_answered_503(fake: FakeOpenAI) -> None:
    app = create_app(wiring_of(fake).config)
    sent: list[dict[str, Any]] = []
    body = msgspec.json.encode({"model": "chat", "messages": []})
    received = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> Any:
        return next(received)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 503
    assert b"has not started" in b"".join(m.get("body", b"") for m in sent[1:])
