"""Endpoints that speak another protocol to clients and OpenAI chat to upstreams.

The shape is ``gateway/api/proxy.py``'s (raw ASGI, the forwarder's fallback, keep-alive while
waiting, cancellation on disconnect, the same metrics); what differs per protocol is a
``Dialect``: how a body becomes an ``Exchange`` (the chat request plus how to answer), how an
error looks before the stream starts, and what keeps an idle stream alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.api.proxy import new_request_id
from gateway.asgi import (
    JSON,
    ClientGone,
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
)
from gateway.config import Model
from gateway.errors import GatewayError, MethodNotAllowed, ModelNotFound
from gateway.forwarder import Trace
from gateway.state import GatewayState
from gateway.streaming import SSEResponse, wait_with_keepalive
from gateway.wire import ClientRequest, Usage

log = logging.getLogger("turnout.ingress")

_INTERNAL = GatewayError("internal gateway error; see the gateway log for the request id")


class StreamTranslator(Protocol):
    """Upstream chat events in, the client protocol's events out (see gateway/translate)."""

    usage: Usage | None

    def feed(self, event: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, error: GatewayError) -> bytes: ...


class Exchange(Protocol):
    request: ClientRequest

    def reply(self, body: bytes) -> tuple[bytes, Usage | None]: ...

    def stream(self) -> StreamTranslator: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """One client protocol, as the shared endpoint needs it."""

    # Label for metrics ("messages", "responses").
    route: str
    # Decodes and translates a request body; raises BadRequest.
    prepare: Callable[[bytes, Scope], Exchange]
    # The protocol's error envelope for an error before the stream starts.
    error_body: Callable[[GatewayError, str], bytes]
    # Sent every keepalive interval while the upstream has not said anything yet.
    keepalive: bytes
    # Header that carries the request id in this protocol, besides x-request-id.
    id_header: bytes | None = None


class TranslatingEndpoint:
    """One request in a client protocol, forwarded as OpenAI chat with fallback."""

    def __init__(self, state: GatewayState, dialect: Dialect) -> None:
        self._state = state
        self._dialect = dialect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dialect = self._dialect
        request_id = (header(scope, b"x-request-id") or b"").decode("latin-1")[
            :128
        ] or new_request_id()
        if scope["method"] != "POST":
            error = MethodNotAllowed(f"{scope['path']} accepts POST only")
            headers = [*self._headers(request_id), (b"allow", b"POST")]
            await send_bytes(
                send, error.status, dialect.error_body(error, request_id), JSON, headers
            )
            return
        started = time.perf_counter()
        state = self._state
        metrics = state.metrics
        metrics.inflight.inc()
        model_name = "-"
        status = 500
        trace = Trace()
        watch: DisconnectWatch | None = None
        response: SSEResponse | None = None
        translator: StreamTranslator | None = None
        try:
            body = await read_body(scope, receive, state.config.server.max_body_bytes)
            exchange = dialect.prepare(body, scope)
            request = exchange.request
            model = state.models.resolve(request.model)
            if model is None:
                available = ", ".join(state.models.names()) or "(none)"
                raise ModelNotFound(
                    f"model {request.model!r} not found; available models: {available}",
                    param="model",
                )
            model_name = model.name
            watch = DisconnectWatch(receive)
            if request.stream:
                response = SSEResponse(send, self._headers(request_id))
                translator = exchange.stream()
                status = await self._stream(
                    model, exchange.request, translator, request_id, trace, response, started, watch
                )
            else:
                status = await self._complete(
                    model, exchange, request_id, trace, send, started, watch
                )
        except GatewayError as exc:
            status = await self._fail(exc, send, request_id, started, trace, response, translator)
        except ClientGone:
            status = 499
        except asyncio.CancelledError:
            if watch is None or not watch.absorb():
                raise
            status = 499
            metrics.child(metrics.disconnects, dialect.route).inc()
        except Exception:
            log.exception("request %s failed inside the gateway", request_id)
            status = await self._fail(
                _INTERNAL, send, request_id, started, trace, response, translator
            )
        finally:
            if watch is not None:
                watch.stop()
            metrics.inflight.dec()
            elapsed = time.perf_counter() - started
            metrics.child(metrics.requests, dialect.route, model_name, str(status)).inc()
            metrics.child(metrics.duration, dialect.route, model_name).observe(elapsed)
            metrics.child(metrics.overhead, dialect.route).observe(
                max(0.0, elapsed - trace.upstream_seconds)
            )

    def _headers(self, request_id: str) -> Headers:
        value = request_id.encode()
        headers = [(b"x-request-id", value)]
        if self._dialect.id_header is not None:
            headers.append((self._dialect.id_header, value))
        return headers

    @staticmethod
    def _finish_headers(headers: Headers, started: float, trace: Trace) -> None:
        # The same headers as ProxyEndpoint._finish_headers: keep the two in step.
        overhead_ms = (time.perf_counter() - started - trace.upstream_seconds) * 1000
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

    async def _complete(
        self,
        model: Model,
        exchange: Exchange,
        request_id: str,
        trace: Trace,
        send: Send,
        started: float,
        watch: DisconnectWatch,
    ) -> int:
        reply = await self._state.forwarder.send(model, exchange.request, request_id, trace)
        watch.stop()
        body, usage = exchange.reply(reply.body)
        if usage is not None:
            self._count_tokens(model.name, usage)
        headers = self._headers(request_id)
        self._finish_headers(headers, started, trace)
        await send_bytes(send, reply.status, body, JSON, headers)
        return reply.status

    async def _stream(
        self,
        model: Model,
        request: ClientRequest,
        translator: StreamTranslator,
        request_id: str,
        trace: Trace,
        response: SSEResponse,
        started: float,
        watch: DisconnectWatch,
    ) -> int:
        state = self._state
        opening = asyncio.get_running_loop().create_task(
            state.forwarder.open_stream(model, request, request_id, trace)
        )
        try:
            opened = await wait_with_keepalive(
                opening, response, state.config.server.keepalive_seconds, self._dialect.keepalive
            )
        finally:
            if not opening.done():
                opening.cancel()
        failed = False
        wait = 0.0
        first_at = 0.0
        try:
            if not response.started:
                self._finish_headers(response.headers, started, trace)
            await response.start()
            try:
                out = translator.feed(opened.first)
                if out:
                    await response.write(out)
                first_at = time.perf_counter()
                events = opened.events
                while True:
                    before = time.perf_counter()
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                    wait += time.perf_counter() - before
                    out = translator.feed(event)
                    if out:
                        await response.write(out)
                out = translator.finish()
            except GatewayError as exc:
                # After the 200: the error travels in-band, in the protocol's own event.
                failed = True
                out = translator.fail(exc)
            if out:
                await response.write(out)
            watch.stop()
            await response.end()
        finally:
            await opened.aclose()
            state.forwarder.release(trace)
            # Time blocked on upstream reads is the upstream's, not the gateway's.
            trace.upstream_seconds += wait
            m = state.metrics
            if first_at:
                m.child(m.ttft, model.name).observe(first_at - started)
            if translator.usage is not None:
                self._count_tokens(model.name, translator.usage)
        return 502 if failed else 200

    def _count_tokens(self, model: str, usage: Usage) -> None:
        m = self._state.metrics
        m.child(m.tokens, model, "prompt").inc(usage.prompt_tokens)
        m.child(m.tokens, model, "completion").inc(usage.completion_tokens)

    async def _fail(
        self,
        error: GatewayError,
        send: Send,
        request_id: str,
        started: float,
        trace: Trace,
        response: SSEResponse | None,
        translator: StreamTranslator | None,
    ) -> int:
        if response is not None and response.started and translator is not None:
            # Keep-alives (or more) went out: the 200 is committed, so the error goes in-band.
            await response.write(translator.fail(error))
            await response.end()
            return error.status
        headers = self._headers(request_id)
        self._finish_headers(headers, started, trace)
        headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
        await send_bytes(
            send, error.status, self._dialect.error_body(error, request_id), JSON, headers
        )
        return error.status
