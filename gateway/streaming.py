"""Relaying an upstream SSE stream to the client.

Per event the relay does byte tests only: is it the usage chunk, is it ``[DONE]``. Content
chunks go out exactly as the adapter produced them. The usage chunk is always requested
upstream (tokens are never lost) and dropped again when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec

from gateway.asgi import EVENT_STREAM, Headers, Send
from gateway.errors import ErrorBody, ErrorEnvelope, GatewayError, UpstreamProtocolError
from gateway.forwarder import OpenStream
from gateway.wire import Usage, usage_of

DONE = b"data: [DONE]"
KEEPALIVE = b": keepalive\n\n"
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class StreamResult:
    """What a finished relay learned, for metrics and logs."""

    usage: Usage | None = None
    first_event_at: float = 0.0
    upstream_wait: float = 0.0
    complete: bool = False
    error: GatewayError | None = None


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
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def error(self, error: GatewayError) -> None:
        """Errors after the stream started travel in-band, as OpenAI's SDKs expect them."""
        envelope = ErrorEnvelope(ErrorBody(error.message, error.type, error.param, error.code))
        await self.write(b"data: " + _encode(envelope) + b"\n\n")


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


async def relay(
    opened: OpenStream, response: SSEResponse, include_usage: bool, result: StreamResult
) -> None:
    """Forward every event after the first; record usage; end with an in-band error if cut off."""
    await response.start()
    await _forward(opened.first, response, include_usage, result)
    result.first_event_at = time.perf_counter()
    events = opened.events
    wait = 0.0
    try:
        while True:
            before = time.perf_counter()
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
            wait += time.perf_counter() - before
            await _forward(event, response, include_usage, result)
    except GatewayError as exc:
        result.error = exc
        await response.error(exc)
    finally:
        result.upstream_wait = wait
    if not result.complete and result.error is None:
        result.error = UpstreamProtocolError("upstream stream ended without [DONE]")
        await response.error(result.error)


async def _forward(
    event: bytes, response: SSEResponse, include_usage: bool, result: StreamResult
) -> None:
    if event.startswith(DONE):
        result.complete = True
        await response.write(event)
        return
    # Byte test first: most chunks carry no usage (or "usage":null) and skip the decode.
    if b'"usage"' in event and b'"usage":null' not in event:
        usage = usage_of(event[6:]) if event.startswith(b"data: ") else None
        if usage is not None:
            result.usage = usage
            if not include_usage and b'"choices":[]' in event:
                return
    await response.write(event)
