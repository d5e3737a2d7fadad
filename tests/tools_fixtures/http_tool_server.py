"""An HTTP tool server on a loopback port (aiohttp), recording what it was sent.

    async with HttpToolServer() as server:       # server.url("/weather")

``POST /weather``  seed 004's ToolCallResult: ``{"ok": true, "result": {"city", "temperature_c"}}``
``POST /plain``    a bare JSON object (no ToolCallResult envelope)
``POST /refuse``   ``{"ok": false, "error": "no such city"}``
``POST /error``    HTTP 500
``POST /slow``     answers after ``server.delay`` seconds
``POST /big``      a body of ``server.big_bytes`` bytes
``POST /redirect`` 302 to the cloud metadata address (must not be followed)
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer


class HttpToolServer(LoopbackServer):
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.delay = 2.0
        self.big_bytes = 2 * 1024 * 1024
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/weather", self._weather)
        app.router.add_post("/plain", self._plain)
        app.router.add_post("/refuse", self._refuse)
        app.router.add_post("/error", self._error)
        app.router.add_post("/slow", self._slow)
        app.router.add_post("/big", self._big)
        app.router.add_post("/redirect", self._redirect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.requests.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        return body

    async def _weather(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        city = body["args"]["city"]
        return web.json_response({"ok": True, "result": {"city": city, "temperature_c": 21}})

    async def _plain(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        return web.json_response({"echo": body["args"], "agent": body["agent_id"]})

    async def _refuse(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"ok": False, "result": None, "error": "no such city"})

    async def _error(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"detail": "boom"}, status=500)

    async def _slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(self.delay)
        return web.json_response({"ok": True, "result": "late"})

    async def _big(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(body=b"x" * self.big_bytes, content_type="application/json")

    async def _redirect(self, request: web.Request) -> web.Response:
        await self._record(request)
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
