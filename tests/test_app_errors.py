"""The last line of defence: an exception nobody expected is logged and answered in an envelope.

Litestar's default answered ``{"status_code": 500, "detail": ...}`` and, with its logging off,
logged nothing (issue 11, item 6: 42 such 500s in fuzzing).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from litestar import Request, get, post

from gateway.app import create_app
from tests.gateway_server import config_of, plain_uvicorn


@get("/v1/broken", sync_to_thread=False)
def broken() -> None:
    raise RuntimeError("a bug in a controller")


@post("/v1/upload", status_code=200)
async def upload(request: Request[Any, Any, Any]) -> int:
    return len(await request.body())


async def test_an_unexpected_exception_is_logged_with_its_request_id_and_enveloped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(config_of({}))
    app.register(broken)
    async with plain_uvicorn(app) as url, aiohttp.ClientSession() as session:
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


async def test_a_client_that_leaves_mid_body_is_no_gateway_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slowloris that gives up (or was answered 408 and closed) must not fill the log."""
    app = create_app(config_of({}))
    app.register(upload)
    async with plain_uvicorn(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with caplog.at_level(logging.DEBUG, logger="turnout"):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /v1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a":'
            )
            await writer.drain()
            await asyncio.sleep(0.2)  # the body read has begun
            writer.close()
            for _ in range(500):
                if any("client left" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
    turnout = [r for r in caplog.records if r.name.startswith("turnout")]
    assert any("client left" in r.getMessage() for r in turnout)
    assert not [r for r in turnout if r.levelno >= logging.WARNING]
