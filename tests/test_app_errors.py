"""The last line of defence: an exception nobody expected is logged and answered in an envelope.

Litestar's default answered ``{"status_code": 500, "detail": ...}`` and, with its logging off,
logged nothing (issue 11, item 6: 42 such 500s in fuzzing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import uvicorn
from litestar import Litestar, get

from gateway.app import create_app
from tests.gateway_server import config_of, free_port


@get("/v1/broken", sync_to_thread=False)
def broken() -> None:
    raise RuntimeError("a bug in a controller")


@asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(1500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def test_an_unexpected_exception_is_logged_with_its_request_id_and_enveloped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(config_of({}))
    app.register(broken)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        with caplog.at_level(logging.ERROR, logger="turnout"):
            async with session.get(url + "/v1/broken", headers={"x-request-id": "req-42"}) as r:
                status, body = r.status, await r.json()
                request_id = r.headers["x-request-id"]
    assert status == 500
    assert request_id == "req-42"
    assert body == {
        "error": {
            "message": "the gateway failed to handle this request; see its log",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    logged = [r for r in caplog.records if "req-42" in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "a bug in a controller" in str(logged[0].exc_info[1])
