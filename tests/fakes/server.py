"""Serving a fake upstream on loopback: the aiohttp runner steps every fake shares."""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from aiohttp import web

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.ServerRunner, int]:
    """Serve ``handler`` on host:port (0: a free one): the runner to clean up, and its port.

    The low-level Server skips Application routing and middlewares: one dict lookup per
    request. handler_cancellation: a client that gives up on a "hang" frees its handler at once.
    """
    server = web.Server(handler, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


class LoopbackServer(ABC):
    """A fake served from ``start`` to ``stop``, or for the span of ``async with``."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
