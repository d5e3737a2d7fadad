"""Client connections: deadlines for slow clients and a cap on open connections.

uvicorn's httptools protocol times out only idle keep-alive connections. A client that opens a
connection and sends nothing, sends its headers a byte at a time, or sends a body shorter than
its Content-Length holds the connection, a file descriptor and perhaps a request task until it
gives up (slowloris); and nothing caps how many such connections there are. This protocol adds:

- a header deadline: a new connection must send a whole request head (request line and headers)
  within ``server.header_timeout_seconds``, counted from the connection (or, on a keep-alive
  connection, from the request's first byte); a partial head gets 408, a silent one is closed;
- a body deadline: a request body may pause at most ``server.body_timeout_seconds`` between
  bytes (an idle deadline, so a large upload on a slow link is fine); then 408, or a plain close
  when an answer already started, and the application sees a disconnect;
- a connection cap: past ``server.max_connections`` open connections (WebSockets included),
  requests are answered 503 in OpenAI's error envelope and the connection is closed.

Nothing per request: no timer, and no override of the parser callbacks. One sweep every
``resolution`` seconds (at most 1 s; it runs only while connections are open) reads each
connection's phase from uvicorn's own state and ends the late ones, so deadlines may fire up to
one ``resolution`` early or late; nothing needs them to the millisecond. The cap is checked once
per connection, when it opens (uvicorn's own ``limit_concurrency`` would check per request, and
answer in plain text).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, cast

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.asgi import GONE, TASK
from gateway.config.schema import Server
from gateway.errors import GatewayError, RequestTimeout, ServerBusy, openai_envelope

log = logging.getLogger("turnout.connections")

_REASONS = {408: b"Request Timeout", 503: b"Service Unavailable"}


def raw_answer(error: GatewayError) -> bytes:
    """A whole HTTP/1.1 answer carrying OpenAI's error envelope, for the transport itself."""
    body = openai_envelope(error)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n" % (error.status, _REASONS[error.status], len(body))
    )
    extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in error.headers.items())
    return head + extra + b"\r\n" + body


class ConnectionGuard:
    """One server's deadlines and cap: the coarse clock, the watched connections, the sweep."""

    def __init__(self, header_seconds: float, body_seconds: float, max_connections: int) -> None:
        self.header_seconds = header_seconds
        self.body_seconds = body_seconds
        self.max_connections = max_connections
        self.resolution = min(1.0, header_seconds / 4, body_seconds / 4)
        # The sweep's clock, also read when a connection opens: at most ``resolution`` behind
        # loop.time() while any connection is open.
        self.now = 0.0
        self._watched: dict[GuardedHttpProtocol, Watch] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._refused = 0
        self._refusal_logged = -1e9
        busy = ServerBusy(
            f"turnout has {max_connections} open connections, its limit "
            "(server.max_connections); retry shortly",
            headers={"Retry-After": "1"},
        )
        self.busy_answer = raw_answer(busy)
        self._busy_body = openai_envelope(busy)

    def watch(self, connection: GuardedHttpProtocol, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self.now = loop.time()
            self._timer = loop.call_later(self.resolution, self._sweep, loop)
        self._watched[connection] = Watch(self, connection)

    def unwatch(self, connection: GuardedHttpProtocol) -> None:
        self._watched.pop(connection, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.now = loop.time()
        for watch in list(self._watched.values()):
            watch.check(now)
        self._timer = loop.call_later(self.resolution, self._sweep, loop) if self._watched else None

    def over_limit(self, connections: int) -> bool:
        # The connection asking is one of ``connections``.
        if connections <= self.max_connections:
            return False
        self._refused += 1
        if self.now - self._refusal_logged >= 10:
            self._refusal_logged = self.now
            log.warning(
                "at the connection limit (server.max_connections = %d): %d requests answered "
                "503 so far",
                self.max_connections,
                self._refused,
            )
        return True

    async def busy(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """The ASGI app that answers a request past the cap."""
        body = self._busy_body
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines for slow clients and the connection cap.

    Nothing here runs per request. Measured under callgrind (2,000 keep-alive POSTs fed to
    ``data_received`` with a no-op app; uvicorn's protocol: 136,600 instructions per request):
    overriding four parser callbacks and the task start cost 13,000 more per request; giving the
    protocol objects attributes of their own still cost 2,500 (with more attributes than
    uvicorn's ~30, CPython stops sharing their instance-dict keys and every attribute read
    slows down); this class, with the sweep's notes in a ``Watch`` beside each connection,
    counts the same as uvicorn's to within 0.1%.
    """

    guard: ClassVar[ConnectionGuard]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        guard.watch(self, self.loop)
        if guard.over_limit(len(self.connections)):
            # Decided once per connection, not per request: its request gets the 503, which
            # closes the connection.
            self.app = guard.busy

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.unwatch(self)
        cycle: RequestResponseCycle | None = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:
            # A request still being answered: cancel its task now (it stops its upstream
            # call too), rather than have a watcher task per request wait on receive().
            # (uvicorn types its scope as a TypedDict; the pipeline's keys are our own.)
            scope = cast(dict[str, Any], cycle.scope)
            task: asyncio.Task[None] | None = scope.get(TASK)
            if task is not None:
                scope[TASK] = None
                scope[GONE] = True
                task.cancel()

    def handle_websocket_upgrade(self) -> None:
        if self.app == self.guard.busy:
            self.guard.unwatch(self)
            self.transport.write(self.guard.busy_answer)
            self.transport.close()
            return
        # The socket belongs to the WebSocket protocol from here on (and with it, its deadlines).
        self.guard.unwatch(self)
        super().handle_websocket_upgrade()


class Watch:
    """What the sweep knows of one connection, read from uvicorn's state rather than tracked.

    No ``scope`` yet: nothing received. A ``scope`` without ``method``: its head is arriving
    (uvicorn adds the method when the head is complete). A cycle with ``more_body``: its body
    is arriving; progress shows as a new or longer ``cycle.body``, since uvicorn appends each
    chunk to it and hands the application a fresh buffer on every ``receive()``. These are
    uvicorn internals, unchanged for years; tests/test_client_timeouts.py fails if one changes.
    """

    __slots__ = ("_body", "_body_size", "_head", "_since", "connected_at", "connection", "guard")

    def __init__(self, guard: ConnectionGuard, connection: GuardedHttpProtocol) -> None:
        self.guard = guard
        self.connection = connection
        self.connected_at = guard.now
        self._head: object = None
        self._body: bytearray | None = None
        self._body_size = 0
        self._since = 0.0

    def check(self, now: float) -> None:
        scope = self.connection.scope
        if scope is None:  # connected, not a byte of a request yet: nothing to answer
            if now - self.connected_at >= self.guard.header_seconds:
                self._end(b"")
        elif "method" not in scope:
            self._check_head(now, scope)
        else:
            self._check_body(now, scope)

    def _check_head(self, now: float, scope: object) -> None:
        cycle: RequestResponseCycle | None = self.connection.cycle
        if scope is not self._head:
            # A new connection's first head counts from the connection; a keep-alive
            # connection's next head from when the sweep first saw it.
            self._head, self._since = scope, self.connected_at if cycle is None else now
        elif now - self._since >= self.guard.header_seconds:
            # A pipelined request's head may trail a response still being written.
            answer = cycle is None or cycle.response_complete
            self._time_out("request headers", self.guard.header_seconds, "header", answer)

    def _check_body(self, now: float, scope: object) -> None:
        cycle = self.connection.cycle
        if cycle is None or cycle.scope is not scope or not cycle.more_body or cycle.disconnected:
            self._body = None
            return
        body = cycle.body
        if (
            body is not self._body
            or len(body) != self._body_size
            or self.connection.flow.read_paused
        ):
            # Progress, or we stopped reading (the application is behind, or a pipelined
            # request waits): either way the client is not the slow one.
            self._body, self._body_size, self._since = body, len(body), now
        elif now - self._since >= self.guard.body_seconds:
            answer = not cycle.response_started
            # The application's receive() now says http.disconnect; its sends are dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            self._time_out("request body", self.guard.body_seconds, "body", answer)

    def _time_out(self, what: str, seconds: float, key: str, answer: bool) -> None:
        error = RequestTimeout(
            f"the {what} did not arrive in time: more than {seconds:g} s passed without it "
            f"(server.{key}_timeout_seconds)"
        )
        self._end(raw_answer(error) if answer else b"")

    def _end(self, answer: bytes) -> None:
        self.guard.unwatch(self.connection)
        transport = self.connection.transport
        if not transport.is_closing():
            if answer:
                transport.write(answer)
            transport.close()


def guarded_protocol(server: Server) -> type[GuardedHttpProtocol]:
    """The HTTP protocol class for one server (uvicorn's ``http=``), sharing one guard."""
    guard = ConnectionGuard(
        server.header_timeout_seconds, server.body_timeout_seconds, server.max_connections
    )
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})
