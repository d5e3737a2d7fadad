"""The answer: a whole body, or a stream relayed event by event; errors in the right envelope.

Used by every transport alike (an HTTP response, a chat on a WebSocket): it writes to a
``Client`` and never sees ASGI. Per stream event the loop does one ``anext``, the translator's
``feed`` and one ``write``: no decoding here, no extra awaits.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from adapters.base import ReadsAhead
from gateway.asgi import Headers
from gateway.errors import GatewayError
from gateway.pipeline.progress import wait_with_stages
from gateway.plugins.capture import reply_text

if TYPE_CHECKING:
    from gateway.config.upstreams import Model
    from gateway.engines.events import EngineEvents
    from gateway.forwarder import OpenStream
    from gateway.pipeline.call import Call, Dialect, Exchange
    from gateway.pipeline.client import Client
    from gateway.streaming import StreamTranslator
    from gateway.wire import ClientRequest


_NO_EVENTS: list[bytes] = []


def _nothing() -> list[bytes]:
    return _NO_EVENTS


class Relay:
    """One dialect's answers: headers, whole bodies, streams and errors."""

    __slots__ = ("_dialect", "_engine_events", "_keepalive_seconds", "_limit_headers")

    def __init__(
        self,
        dialect: Dialect,
        keepalive_seconds: float,
        limit_headers: bool,
        engine_events: EngineEvents | None = None,
    ) -> None:
        self._dialect = dialect
        self._keepalive_seconds = keepalive_seconds
        # Local engines' loading stages, for streams that wait on one (None: no local roles).
        self._engine_events = engine_events
        # Refusals always carry x-ratelimit-* (they are raised with them); admitted answers
        # only when routing.yaml asks for OpenAI's every-answer behaviour.
        self._limit_headers = limit_headers

    # --- headers -------------------------------------------------------------------------------

    def headers(self, request_id: str) -> Headers:
        value = request_id.encode()
        headers = [(b"x-request-id", value)]
        if self._dialect.id_header is not None:
            headers.append((self._dialect.id_header, value))
        return headers

    def finish_headers(self, headers: Headers, call: Call) -> None:
        trace = call.trace
        overhead_ms = (time.perf_counter() - call.started - trace.upstream_seconds) * 1000
        headers.append((b"x-turnout-overhead-ms", f"{overhead_ms:.3f}".encode()))
        if trace.target is not None:
            headers.append(
                (b"x-turnout-target", f"{trace.target.provider}/{trace.target.model}".encode())
            )
        if trace.attempts > 1:
            headers.append((b"x-turnout-attempts", str(trace.attempts).encode()))
        lease = trace.lease
        if lease is not None:
            headers.append((b"x-turnout-role", lease.role.encode()))
            if lease.note:
                # Header values must be latin-1; notes are ASCII by construction.
                headers.append((b"x-turnout-fallback", lease.note.encode("ascii", "replace")))
        elif trace.fallback:
            # A local target failed and a cloud one answered: never silent.
            headers.append((b"x-turnout-fallback", trace.fallback.encode("ascii", "replace")))
        if call.admission is not None and self._limit_headers:
            headers.extend(call.admission.headers())

    # --- answers -------------------------------------------------------------------------------

    async def complete(self, call: Call, model: Model, exchange: Exchange, client: Client) -> int:
        assert call.forwarder is not None
        reply = await call.forwarder.send(model, exchange.request, call.request_id, call.trace)
        client.settle()
        if call.hooked is not None and call.hooked.capture_reply:
            call.reply_text = reply_text(reply.body)
        body, call.usage = self._dialect.render(
            exchange, reply.body, reply.protocol, call.trace.target
        )
        headers = self.headers(call.request_id)
        if exchange.request.ignored:
            headers.append((b"x-turnout-ignored", exchange.request.ignored.encode()))
        self.finish_headers(headers, call)
        call.sent_bytes = len(body)
        await client.answer(reply.status, body, headers)
        return reply.status

    async def stream(
        self,
        call: Call,
        model: Model,
        request: ClientRequest,
        translator: StreamTranslator,
        client: Client,
    ) -> int:
        forwarder = call.forwarder
        assert forwarder is not None
        headers = self.headers(call.request_id)
        if request.ignored:
            headers.append((b"x-turnout-ignored", request.ignored.encode()))
        opening = asyncio.get_running_loop().create_task(
            forwarder.open_stream(model, request, call.request_id, call.trace)
        )
        try:
            opened = await self._wait_with_keepalive(opening, client, headers, call)
        finally:
            if not opening.done():
                opening.cancel()
        try:
            return await self._relay(call, opened, translator, client, headers)
        finally:
            # One cleanup duty: closing the stream gives back its target and engine lease.
            await opened.aclose()

    async def _relay(
        self,
        call: Call,
        opened: OpenStream,
        translator: StreamTranslator,
        client: Client,
        headers: Headers,
    ) -> int:
        trace = call.trace
        failed = False
        wait = 0.0
        sent = 0
        chunks = 1
        try:
            if not client.started:
                self.finish_headers(headers, call)
            await client.start(headers)
            try:
                translator.begin(opened.protocol)
                out = translator.feed(opened.first)
                if out:
                    sent += len(out)
                    await client.write(out)
                call.ttft = time.perf_counter() - call.started
                events = opened.events
                # Events that arrived in one read go out in one write: measured on the 20-chunk
                # bench stream, one send per event was most of what turnout added per stream.
                drain = events.drain if isinstance(events, ReadsAhead) else _nothing
                while True:
                    before = time.perf_counter()
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                    wait += time.perf_counter() - before
                    ready = drain()
                    chunks += 1 + len(ready)
                    parts: list[bytes] = []
                    try:
                        out = translator.feed(event)
                        if out:
                            parts.append(out)
                        for event in ready:
                            out = translator.feed(event)
                            if out:
                                parts.append(out)
                    finally:
                        # Written even when an event fails to translate: what came before it
                        # reaches the client ahead of the in-band error.
                        if parts:
                            out = parts[0] if len(parts) == 1 else b"".join(parts)
                            sent += len(out)
                            await client.write(out)
                closing = translator.finish()
            except GatewayError as exc:
                # After the 200: the error travels in-band, in the protocol's own event.
                failed = True
                closing = [translator.fail(exc)]
            for piece in closing:
                if piece:
                    await client.write(piece)
            client.settle()
            await client.end()
        finally:
            # Runs on disconnects too: the tokens streamed so far still get counted.
            call.sent_bytes = sent
            call.chunks = chunks
            call.usage = translator.usage
            # Time blocked on upstream reads is the upstream's, not the gateway's.
            trace.upstream_seconds += wait
        return 502 if failed else 200

    async def _wait_with_keepalive(
        self, opening: asyncio.Task[OpenStream], client: Client, headers: Headers, call: Call
    ) -> OpenStream:
        """Wait for the first upstream event; every keepalive interval, send a keep-alive.

        A local engine may spend a minute on a long prompt (or on loading a model) before the
        first token; without traffic, clients and proxies in between time the stream out.
        Sending a comment commits the 200 status, which is why it waits one interval first:
        fast failures still get a proper HTTP error status. A request queued for a local engine
        (one being swapped in) gets its loading stages as the comments instead (progress.py).
        """
        while True:
            done, _ = await asyncio.wait((opening,), timeout=self._keepalive_seconds)
            if done:
                return opening.result()
            events = self._engine_events
            if events is not None and call.trace.engine_role:
                return await wait_with_stages(
                    opening,
                    client,
                    headers,
                    call,
                    events,
                    self._keepalive_seconds,
                    self._dialect.keepalive,
                )
            await client.start(headers)
            await client.write(self._dialect.keepalive)

    async def fail(
        self,
        call: Call,
        error: GatewayError,
        client: Client,
        translator: StreamTranslator | None,
    ) -> int:
        if client.started and translator is not None:
            # Keep-alives (or more) went out: the 200 is committed, so the error goes in-band.
            await client.write(translator.fail(error))
            await client.end()
            return error.status
        headers = self.headers(call.request_id)
        self.finish_headers(headers, call)
        headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
        await client.answer(error.status, self._dialect.error_body(error, call.request_id), headers)
        return error.status
