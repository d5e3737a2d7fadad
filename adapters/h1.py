"""A lean HTTP/1.1 client for plain-HTTP upstreams: the model calls to local and LAN engines.

Why not aiohttp here: its client costs about 350,000 instructions per request on the event
loop (callgrind, uvloop, one POST and its answer read), more than all the rest of turnout's
work for a request; this one, a keep-alive pool over httptools' C parser writing each request
in one ``transport.write``, about 25,000. It only takes the calls where that simplicity holds:
``http://`` origins (no TLS, no proxy; the session does not read proxy variables either),
POST with a bytes body, answers framed by Content-Length, chunked, or the connection's close.
Everything else (https cloud APIs, probes, engine control calls) stays on aiohttp.

Errors are the gateway's own (``gateway.errors``), the same ones ``adapters.http`` maps
aiohttp's to; deadlines are the callers' ``Expiry``, which cancels the waiting task. An answer
not read to its end (cancelled, failed, closed early) closes its connection: only connections
whose last answer was read whole, and that the server keeps alive, return to the pool.
"""

from __future__ import annotations

import asyncio
import socket
import zlib
from collections import deque
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import httptools

from adapters.keepalive import ENGINE_KEEPALIVE_SECONDS
from gateway.errors import (
    StaleConnection,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHungUp,
    UpstreamProtocolError,
)

if TYPE_CHECKING:
    from gateway.config.upstreams import Provider

# Below what local engines advertise, as for aiohttp's engine pool (see there); a close the
# server makes first is seen by the connection and it is dropped.
KEEPALIVE_SECONDS = ENGINE_KEEPALIVE_SECONDS
# Idle connections kept per origin; more are closed as they come back.
MAX_IDLE = 64
# Unread stream bytes above which the socket stops being read until the relay catches up.
_HIGH_WATER = 1 << 18
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}


class Headers(dict[str, str]):
    """An answer's headers, names lower-cased; ``get`` takes any case, as aiohttp's does."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class H1Response:
    """One answer: status and headers once the head is in, then its body as it arrives.

    Duck-types what the adapters read of ``aiohttp.ClientResponse`` (``status``, ``headers``,
    ``content.readany()``, ``read()``, ``close()``, ``release()``, ``closed``).
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_decoder",
        "_error",
        "_waiter",
        "closed",
        "content",
        "done",
        "headers",
        "limit",
        "status",
    )

    def __init__(self, connection: _Connection, limit: int) -> None:
        self._connection: _Connection | None = connection
        self.limit = limit
        self.status = 0
        self.headers = Headers()
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._decoder: zlib._Decompress | None = None
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.closed = False
        self.content = self

    # --- fed by the connection ----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            data = self._decoder.decompress(data, self.limit + 1)
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.limit:
            self._fail(
                UpstreamProtocolError(
                    f"upstream answer exceeds {self.limit} bytes (timeouts.max_body_bytes)"
                )
            )
            return
        self._wake()

    def _finish(self) -> None:
        self.done = True
        self._connection = None
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self.done:
            return
        self._error = error
        self.done = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.response = None  # nothing more of this answer is wanted
            connection.abort()
        self._wake()

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        except BaseException:
            # Cancelled (a deadline, the client left): the rest of this answer is never read.
            self.close()
            raise

    # --- read by the adapters -----------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body (at most ``limit`` bytes)."""
        while not self.done:
            await self._wait()
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        self._chunks = []
        self.closed = True
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def readany(self) -> bytes:
        """What arrived since the last read, waiting for some; b"" at the end of the body."""
        while not self._chunks:
            if self.done:
                if self._error is not None:
                    raise self._error
                self.closed = True
                return b""
            await self._wait()
        chunks = self._chunks
        self._chunks = []
        self._buffered = 0
        connection = self._connection
        if connection is not None and connection.paused:
            connection.resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        """Stop reading: an answer not read to its end takes its connection with it."""
        self.closed = True
        if not self.done:
            self.done = True
            self._error = UpstreamProtocolError("answer closed before its end")
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.response = None
                connection.abort()

    release = close


class _Connection(asyncio.Protocol):
    """One kept-alive connection; httptools calls the ``on_*`` methods as it parses."""

    def __init__(self, pool: H1Pool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: H1Response | None = None
        self.open = True
        self.paused = False
        self.reused = False
        self.idle_since = 0.0
        self._received = False
        self._until_close = False

    # --- transport ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # The request goes in one write; nothing to gain from Nagle, only latency.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes while idle: nothing asked for them, so the connection is unusable.
            self.abort()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(UpstreamProtocolError(f"upstream sent a malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        response, self.response = self.response, None
        if response is None:
            return
        if self._until_close and response.status:
            response._finish()  # a body framed by the close: its end
        elif self.reused and not self._received:
            response._fail(StaleConnection("upstream closed a kept-alive connection"))
        elif not self._received:
            response._fail(UpstreamHungUp("upstream closed the connection before answering"))
        else:
            response._fail(UpstreamProtocolError("upstream closed the connection"))

    def abort(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.abort()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and self.open:
            self.transport.resume_reading()

    # --- parser callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is not None:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers = response.headers
            headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None:
            return
        status = self._parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue): the real one follows for the same request.
            response.headers = Headers()
            return
        response.status = status
        headers = response.headers
        self._until_close = (
            "content-length" not in headers
            and "transfer-encoding" not in headers
            and status not in (204, 304)
        )
        coding = headers.get("content-encoding")
        if coding is not None and (coding := coding.strip().lower()) not in ("", "identity"):
            wbits = _CODINGS.get(coding)
            if wbits is None:
                response._fail(
                    UpstreamProtocolError(
                        f"upstream answer cannot be decoded: Content-Encoding {coding!r}"
                    )
                )
                return
            response._decoder = zlib.decompressobj(wbits)
        response._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None:
            response._feed(body)
            if response._buffered > _HIGH_WATER and not self.paused and self.transport:
                self.paused = True
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response, self.response = self.response, None
        if response is None:
            return
        if not response.status:
            self.response = response  # the end of an interim answer; the real one follows
            return
        keep = self._parser.should_keep_alive() and not self._until_close
        response._finish()
        if keep and self.open:
            self._pool.release(self)
        else:
            self.abort()

    # --- one exchange -------------------------------------------------------------------------

    def start(self, request: bytes, limit: int) -> H1Response:
        response = self.response = H1Response(self, limit)
        self._received = False
        self._until_close = False
        assert self.transport is not None
        self.transport.write(request)
        return response


class H1Pool:
    """Keep-alive connections to one ``http://host:port`` origin, and the requests it sends."""

    def __init__(self, host: str, port: int, keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.authority = host if port == 80 else f"{host}:{port}"
        self._idle: deque[_Connection] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def head(self, path: str, headers: dict[str, str]) -> bytes:
        """The fixed part of a POST to ``path``: all but its Content-Length value, built once."""
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.authority}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if not any(name.lower() == "accept-encoding" for name in headers):
            lines.append("Accept-Encoding: identity")
        lines.append("Content-Length: ")
        return "\r\n".join(lines).encode("latin-1")

    async def post(self, head: bytes, body: bytes, limit: int) -> H1Response:
        """Send one POST (``head`` from ``head()``); return once the answer's head is in."""
        request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        connection = await self._connection()
        response = connection.start(request, limit)
        while not response.status and not response.done:
            await response._wait()
        if response._error is not None:
            raise response._error
        return response

    async def _connection(self) -> _Connection:
        idle = self._idle
        loop = self._loop
        while idle:
            connection = idle.pop()  # the most recent: the least likely to be closed
            assert loop is not None
            if connection.open and loop.time() - connection.idle_since < self.keepalive:
                connection.reused = True
                return connection
            connection.abort()
        if self._closed:
            raise UpstreamConnectError("the gateway is shutting down")
        loop = self._loop = asyncio.get_running_loop()
        connection = _Connection(self)
        try:
            await loop.create_connection(lambda: connection, self.host, self.port)
        except OSError as exc:
            reason = exc.strerror or str(exc) or exc.__class__.__name__
            raise UpstreamConnectError(
                f"cannot connect to {self.host}:{self.port}: {reason}"
            ) from None
        return connection

    def release(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE or self._loop is None:
            connection.abort()
            return
        connection.idle_since = self._loop.time()
        self._idle.append(connection)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().abort()


def pool_for(provider: Provider) -> H1Pool | None:
    """A pool for this provider's origin when the lean client can carry its calls, else None."""
    parts = urlsplit(provider.base_url)
    if parts.scheme != "http" or not parts.hostname or parts.username or parts.password:
        return None
    values = [*provider.headers.values(), provider.api_key or ""]
    names = list(provider.headers)
    if any(c in text for text in (*values, *names) for c in "\r\n\0"):
        return None  # aiohttp refuses these with its own error; keep that behaviour
    return H1Pool(parts.hostname, parts.port or 80)
