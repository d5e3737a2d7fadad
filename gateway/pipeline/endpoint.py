"""The raw-ASGI glue: an HTTP request as the pipeline's ``Client``, and the hot-path router.

Raw on purpose (see gateway/asgi.py): Litestar's request/response machinery costs ~20%
throughput and ~0.3 ms p50 over raw ASGI for a forwarding proxy. ``HotPaths`` goes one step
further and answers the proxy endpoints before Litestar's own routing, middleware and send
wrappers are entered (everything else still goes through Litestar).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from gateway.asgi import (
    EVENT_STREAM,
    GONE,
    JSON,
    TASK,
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
)
from gateway.errors import MethodNotAllowed, ServerBusy
from gateway.pipeline.call import Dialect, new_request_id
from gateway.pipeline.run import Pipeline
from gateway.state import GatewayState

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Writes larger than this go out in slices, each waiting for the socket to drain: the server
# copies every body it sends (chunked framing) and the socket buffers what the client has not
# read yet, so one 80 MB write (a Responses stream's final events repeat a 20 MB answer four
# times) would briefly cost two more copies of it.
SLICE = 1 << 20


class HttpClient:
    """One HTTP request and its response, as the pipeline's ``Client``.

    A departure is learnt one of two ways. Under turnout's own server protocol
    (gateway/connections.py), losing the connection cancels the task directly: nothing per
    request but a dict store. Elsewhere (another ASGI server, tests' in-process clients) a
    ``DisconnectWatch`` task listens on ``receive()``, the only signal ASGI gives.
    """

    __slots__ = ("_limit", "_receive", "_send", "_watch", "scope", "started")

    def __init__(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self._limit = limit
        self._watch: DisconnectWatch | None = None
        self.started = False

    async def body(self) -> bytes:
        return await read_body(self.scope, self._receive, self._limit)

    def watch(self) -> None:
        scope = self.scope
        if TASK in scope:
            scope[TASK] = asyncio.current_task()
        else:
            self._watch = DisconnectWatch(self._receive)

    def settle(self) -> None:
        scope = self.scope
        if TASK in scope:
            scope[TASK] = None
        watch = self._watch
        if watch is not None:
            self._watch = None
            watch.stop()

    def departed(self) -> bool:
        if self.scope.get(GONE):
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            return True
        watch = self._watch
        return watch is not None and watch.absorb()

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        await send_bytes(self._send, status, body, JSON, headers)

    async def start(self, headers: Headers) -> None:
        if self.started:
            return
        self.started = True
        headers.append((b"content-type", EVENT_STREAM))
        headers.append((b"cache-control", b"no-cache"))
        # Tell nginx-style proxies not to buffer the stream.
        headers.append((b"x-accel-buffering", b"no"))
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def write(self, data: bytes) -> None:
        if len(data) > SLICE:
            await self._write_slices(data)
            return
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def _write_slices(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(data), SLICE):
            piece = bytes(view[start : start + SLICE])
            await self._send({"type": "http.response.body", "body": piece, "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class IngressEndpoint:
    """``POST`` one client protocol's request, as a raw ASGI app."""

    __slots__ = ("_limit", "pipeline")

    def __init__(self, state: GatewayState, dialect: Dialect) -> None:
        self.pipeline = Pipeline(state, dialect)
        self._limit = state.config.server.max_body_bytes

    @property
    def dialect(self) -> Dialect:
        return self.pipeline.dialect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = (header(scope, b"x-request-id") or b"").decode("latin-1")[
            :128
        ] or new_request_id()
        if scope["method"] != "POST":
            await self._refuse_method(scope, send, request_id)
            return
        await self.pipeline.run(HttpClient(scope, receive, send, self._limit), request_id)

    async def _refuse_method(self, scope: Scope, send: Send, request_id: str) -> None:
        error = MethodNotAllowed(f"{scope['path']} accepts POST only")
        headers = [*self.pipeline.relay.headers(request_id), (b"allow", b"POST")]
        body = self.dialect.error_body(error, request_id)
        await send_bytes(send, error.status, body, JSON, headers)


# How an endpoint is built from the running gateway; each client protocol's module lists its
# paths with one of these (``ENDPOINTS``), and gateway/app.py's ``INGRESS`` joins the lists.
EndpointFactory = Callable[[GatewayState], ASGIApp]


def ingress(dialect: Dialect) -> EndpointFactory:
    """The factory of an endpoint that runs ``dialect`` through the shared pipeline."""

    def build(state: GatewayState) -> IngressEndpoint:
        return IngressEndpoint(state, dialect)

    return build


class Slot:
    """Where a hot-path endpoint is mounted before it exists: the app is built before the
    gateway it serves, and the lifespan fills each slot with the endpoint built from the
    running state."""

    __slots__ = ("endpoint",)

    def __init__(self) -> None:
        self.endpoint: ASGIApp = _not_started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(scope, receive, send)


async def _not_started(scope: Scope, receive: Receive, send: Send) -> None:
    raise ServerBusy("the gateway has not started: its lifespan has not run")


class HotPaths:
    """The proxy endpoints by exact path, in front of the application that serves the rest.

    ``cancels_on_disconnect``: the server's protocol cancels a request's task when its
    connection is lost (gateway/connections.py), so endpoints need no watcher task.
    """

    __slots__ = ("_paths", "_rest", "_task_slot")

    def __init__(
        self, paths: Mapping[str, Slot], rest: ASGIApp, cancels_on_disconnect: bool
    ) -> None:
        self._paths = dict(paths)
        self._rest = rest
        self._task_slot = cancels_on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            slot = self._paths.get(scope["path"])
            if slot is not None:
                if self._task_slot:
                    scope[TASK] = None
                await slot.endpoint(scope, receive, send)
                return
        await self._rest(scope, receive, send)
