"""The client side of a streamed answer: SSE headers, events, keep-alives while waiting."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from gateway.asgi import EVENT_STREAM, Headers, Send
from gateway.forwarder import OpenStream

if TYPE_CHECKING:
    from gateway.contract import WireProtocol
    from gateway.errors import GatewayError
    from gateway.wire import Usage

KEEPALIVE = b": keepalive\n\n"
# Writes larger than this go out in slices, each waiting for the socket to drain: the server
# copies every body it sends (chunked framing) and the socket buffers what the client has not
# read yet, so one 80 MB write (a Responses stream's final events repeat a 20 MB answer four
# times) would briefly cost two more copies of it.
SLICE = 1 << 20


class StreamTranslator(Protocol):
    """Upstream chat events in, the client protocol's events out (see gateway/translate)."""

    usage: Usage | None

    def begin(self, protocol: WireProtocol) -> None:
        """Called once, before the first event: the protocol the upstream answers in."""
        ...

    def feed(self, event: bytes) -> bytes: ...

    def finish(self) -> list[bytes]:
        """The closing events once the upstream ended, as pieces written in order.

        A list rather than one ``bytes``: Responses repeats a reply's whole text in four final
        events, and keeping that text one shared piece means it is never copied four times
        (a 200 MB reply once cost 1.3-2.0 GB of RSS this way).
        """
        ...

    def fail(self, error: GatewayError) -> bytes: ...


class SSEResponse:
    """The client side of one SSE response: headers once, then events."""

    __slots__ = ("_send", "headers", "started")

    def __init__(self, send: Send, headers: Headers) -> None:
        self._send = send
        self.headers = headers
        self.started = False

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.headers.append((b"content-type", EVENT_STREAM))
        self.headers.append((b"cache-control", b"no-cache"))
        # Tell nginx-style proxies not to buffer the stream.
        self.headers.append((b"x-accel-buffering", b"no"))
        await self._send({"type": "http.response.start", "status": 200, "headers": self.headers})

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


async def wait_with_keepalive(
    opening: asyncio.Task[OpenStream],
    response: SSEResponse,
    interval: float,
    keepalive: bytes = KEEPALIVE,
) -> OpenStream:
    """Wait for the first upstream event; every ``interval`` s, send ``keepalive`` instead.

    A local engine may spend a minute on a long prompt (or on loading a model) before the
    first token; without traffic, clients and proxies in between time the stream out.
    Sending a comment commits the 200 status, which is why it waits one interval first:
    fast failures still get a proper HTTP error status.
    """
    while True:
        done, _ = await asyncio.wait((opening,), timeout=interval)
        if done:
            return opening.result()
        await response.start()
        await response.write(keepalive)
