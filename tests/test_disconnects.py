"""A client that leaves cancels its request and the upstream call, under any ASGI server.

turnout's own server protocol (gateway/connections.py) cancels the request's task when the
connection is lost (tests/test_proxy.py covers that path, as every test through
``running_gateway`` does). Under another server there is no such protocol: the pipeline's HTTP
client then watches ``receive()`` for ``http.disconnect`` with a task of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from gateway.app import create_app, serving_app
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import config_of, plain_uvicorn

USER = [{"role": "user", "content": "ping"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


@asynccontextmanager
async def turnout_on_plain_uvicorn(fake: FakeOpenAI, hot_paths: bool) -> AsyncIterator[str]:
    """turnout under uvicorn's own protocol, with or without the hot-path router in front."""
    config = config_of(
        {
            "providers": {"a": {"kind": "openai", "base_url": fake.url, "local": True}},
            "models": [{"name": "m", "targets": [{"provider": "a", "model": "hang"}]}],
            "routing": {"retries": 0},
        }
    )
    litestar = create_app(config)
    app = serving_app(litestar, cancels_on_disconnect=False) if hot_paths else litestar
    async with plain_uvicorn(app) as url:
        yield url


async def _after_a_client_left(url: str, stream: bool) -> str:
    body = {"model": "m", "messages": USER, "stream": stream}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.5):
                await session.post(url + "/v1/chat/completions", json=body)
    text = ""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(url + "/metrics") as response:
                text = await response.text()
            if "turnout_requests_in_flight 0.0" in text:
                break
            await asyncio.sleep(0.05)
    return text


@pytest.mark.parametrize("hot_paths", [True, False], ids=["hot-paths", "litestar-only"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_client_that_leaves_cancels_its_request_under_a_plain_uvicorn(
    fake: FakeOpenAI, hot_paths: bool, stream: bool
) -> None:
    async with turnout_on_plain_uvicorn(fake, hot_paths) as url:
        text = await _after_a_client_left(url, stream)
    assert "turnout_requests_in_flight 0.0" in text, "the request kept waiting on its upstream"
    assert 'turnout_client_disconnects_total{route="chat"} 1.0' in text
