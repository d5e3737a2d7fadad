"""Pooled upstream connections: which request rode a reused one, and how long idle ones live.

A kept-alive connection can be closed by the server at any moment while it sits in the pool:
llama-server advertises ``Keep-Alive: timeout=5, max=100`` yet closes the connection after
every streamed answer (measured: of 40 back-to-back streams straight to it, none reused a
connection successfully and 18 failed). A request written onto such a connection in the
instant before the close is seen fails with ``ServerDisconnectedError`` or ``ClientOSError``
("Can not write request body", ``ECONNRESET``) before any response byte. That is
the pool's fault, not the engine's: the request is safe to send again on a new connection
(the server never saw it, or dropped it unanswered), and must not count as a failed attempt.
aiohttp retries such requests itself for idempotent methods only; every model call is a POST.

``PoolConnector`` notes, per request, whether its connection came from the pool. The note
lives in a ContextVar: aiohttp awaits ``connect()`` inside the caller's task, so the adapter
that catches the error reads the value set for its own request: no extra suspension and no
per-request object on the success path, one set membership test per connection handed out.
"""

from __future__ import annotations

import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace


_reused: ContextVar[bool] = ContextVar("turnout_connection_reused", default=False)


class PoolConnector(aiohttp.TCPConnector):
    """A TCPConnector that records whether each request's connection was reused from the pool."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # Connections that already carried a request; weak, so closed ones simply vanish.
        self._served: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        served = self._served
        if protocol in served:
            _reused.set(True)
        else:
            if protocol is not None:
                served.add(protocol)
            _reused.set(False)
        return connection


def connection_reused() -> bool:
    """Whether the current task's latest upstream request went out on a pooled connection."""
    return _reused.get()


def sibling_session(
    session: aiohttp.ClientSession, keepalive_seconds: float
) -> aiohttp.ClientSession:
    """A session with ``session``'s settings over a pool of its own that keeps idle connections
    ``keepalive_seconds`` (aiohttp's keep-alive is per connector, so per session)."""
    connector = session.connector
    options: dict[str, Any] = {}
    if isinstance(connector, aiohttp.TCPConnector):
        options = {"limit": connector.limit, "limit_per_host": connector.limit_per_host}
    return aiohttp.ClientSession(
        connector=PoolConnector(keepalive_timeout=keepalive_seconds, **options),
        headers=session.headers,
        skip_auto_headers=session.skip_auto_headers,
        auto_decompress=session.auto_decompress,
        timeout=session.timeout,
        trust_env=session.trust_env,
    )


def close_idle(session: aiohttp.ClientSession, host: str, port: int) -> int:
    """Close ``session``'s idle pooled connections to ``host:port``; returns how many.

    Called just before an engine is stopped: llama-server holds its exit until the idle
    keep-alive connections it serves are closed (measured with a tiny model: SIGTERM to exit
    in 40 ms with none open, 150-200 ms with one from turnout's pool), and every swap that
    waits for the old engine waits for that. aiohttp has no public way to close one host's
    connections: its pool maps each ``ConnectionKey`` to a deque of idle (protocol, time)
    pairs. Each deque is emptied in place, which aiohttp's own ``_get`` and ``_cleanup``
    already handle; a connector without that pool simply closes nothing.
    """
    pool = getattr(session.connector, "_conns", None)
    if not isinstance(pool, dict):
        return 0
    closed = 0
    for key, idle in list(pool.items()):
        if getattr(key, "host", None) != host or getattr(key, "port", None) != port:
            continue
        while idle:
            protocol, _ = idle.popleft()
            protocol.close()
            closed += 1
    return closed
