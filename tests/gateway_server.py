"""Run a real turnout on a free loopback port inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from litestar import Litestar
from openai import AsyncOpenAI

from gateway.app import create_app, serving_app
from gateway.config import Config, from_mapping
from gateway.connections import guarded_protocol
from gateway.draining import draining
from gateway.server import listen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningGateway:
    url: str  # http://127.0.0.1:PORT
    app: Litestar
    config: Config
    clients: list[AsyncOpenAI] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def openai(self, **options: Any) -> AsyncOpenAI:
        """An official SDK client pointed at this gateway, closed when the gateway stops."""
        client = AsyncOpenAI(
            base_url=self.v1,
            api_key=options.pop("api_key", "unused"),
            max_retries=options.pop("max_retries", 0),
            **options,
        )
        self.clients.append(client)
        return client


def config_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    """A config for tests; its database is a fresh temporary file unless the test names one."""
    scratch = Path(tempfile.mkdtemp(prefix="turnout-test-"))
    server = dict(raw.get("server") or {})
    server.setdefault("database", str(scratch / "turnout.db"))
    # Saved KV caches stay with the test: one test's slots must never warm another's engine.
    engines = dict(raw.get("engines") or {})
    kv_cache = dict(engines.get("kv_cache") or {})
    kv_cache.setdefault("dir", str(scratch / "kv-cache"))
    engines["kv_cache"] = kv_cache
    return from_mapping({**raw, "server": server, "engines": engines}, "test", env or {})


@asynccontextmanager
async def running_gateway(config: Config, port: int = 0) -> AsyncIterator[RunningGateway]:
    """``port``: 0 for a free one (tests that must know it first, such as peers naming each
    other, pick it with ``free_port``)."""
    # Bound before the app picks its engines' ports, as ``turnout serve`` does: a port picked
    # free and released here could otherwise be handed to an engine, which then found the
    # gateway listening on it and proxied the gateway to itself.
    [listener] = listen("127.0.0.1", port)
    port = listener.getsockname()[1]
    app = create_app(config)
    # As gateway/server.py serves it: the hot paths before Litestar, and the protocol with
    # client deadlines, the connection cap and cancel-on-disconnect.
    server = uvicorn.Server(
        uvicorn.Config(
            serving_app(app, cancels_on_disconnect=True),
            http=draining(guarded_protocol(config.server)),
            host="127.0.0.1",
            port=port,
            loop="none",
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[listener]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        task.cancel()
        listener.close()
        raise RuntimeError("turnout did not start")
    running = RunningGateway(f"http://127.0.0.1:{port}", app, config)
    try:
        yield running
    finally:
        for client in running.clients:
            await client.close()
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 15)
        finally:
            listener.close()


@asynccontextmanager
async def plain_uvicorn(app: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn's own protocol (not turnout's server setup); its base URL."""
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
