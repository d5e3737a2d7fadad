"""The forwarding endpoints: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``.

Raw ASGI on purpose (see ``gateway/asgi.py``): this is the only code every request runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from adapters.base import Operation
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
from gateway.errors import GatewayError, MethodNotAllowed, ModelNotFound, openai_envelope
from gateway.forwarder import Trace
from gateway.state import GatewayState
from gateway.streaming import SSEResponse, StreamResult, relay, wait_with_keepalive
from gateway.wire import ClientRequest, decode_request, usage_of

log = logging.getLogger("turnout.proxy")

_INTERNAL = GatewayError("internal gateway error; see the gateway log for the request id")


def new_request_id() -> str:
    return os.urandom(12).hex()


class ProxyEndpoint:
    """One OpenAI operation, forwarded with fallback."""

    def __init__(self, state: GatewayState, op: Operation, route: str) -> None:
        self._state = state
        self._op = op
        self._route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            error = MethodNotAllowed(f"{scope['path']} accepts POST only")
            await send_bytes(
                send, error.status, openai_envelope(error), JSON, [(b"allow", b"POST")]
            )
            return
        started = time.perf_counter()
        request_id = (header(scope, b"x-request-id") or b"").decode("latin-1")[
            :128
        ] or new_request_id()
        state = self._state
        metrics = state.metrics
        metrics.inflight.inc()
        model_name = "-"
        status = 500
        trace = Trace()
        watch: DisconnectWatch | None = None
        response: SSEResponse | None = None
        try:
            body = await read_body(scope, receive, state.config.server.max_body_bytes)
            request = decode_request(self._op, body)
            model = state.models.resolve(request.model)
            if model is None:
                raise ModelNotFound(
                    f"model {request.model!r} not found; available models: {', '.join(state.models.names()) or '(none)'}",
                    param="model",
                )
            model_name = model.name
            watch = DisconnectWatch(receive)
            if request.stream:
                response = SSEResponse(send, self._headers(request_id))
                status = await self._stream(
                    model, request, request_id, trace, response, started, watch
                )
            else:
                status = await self._complete(
                    model, request, request_id, trace, send, started, watch
                )
        except GatewayError as exc:
            status = await self._fail(exc, send, request_id, started, trace, response)
        except ClientGone:
            status = 499
        except asyncio.CancelledError:
            if watch is None or not watch.absorb():
                raise
            status = 499
            metrics.child(metrics.disconnects, self._route).inc()
        except Exception:
            log.exception("request %s failed inside the gateway", request_id)
            status = await self._fail(_INTERNAL, send, request_id, started, trace, response)
        finally:
            if watch is not None:
                watch.stop()
            metrics.inflight.dec()
            elapsed = time.perf_counter() - started
            metrics.child(metrics.requests, self._route, model_name, str(status)).inc()
            metrics.child(metrics.duration, self._route, model_name).observe(elapsed)
            metrics.child(metrics.overhead, self._route).observe(
                max(0.0, elapsed - trace.upstream_seconds)
            )

    @staticmethod
    def _headers(request_id: str) -> Headers:
        return [(b"x-request-id", request_id.encode())]

    def _finish_headers(
        self, headers: Headers, started: float, trace: Trace, request_id: str
    ) -> None:
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
                log.info("request %s: %s", request_id, lease.note)

    async def _complete(
        self,
        model: Model,
        request: ClientRequest,
        request_id: str,
        trace: Trace,
        send: Send,
        started: float,
        watch: DisconnectWatch,
    ) -> int:
        reply = await self._state.forwarder.send(model, request, request_id, trace)
        watch.stop()
        usage = usage_of(reply.body)
        if usage is not None:
            self._count_tokens(model.name, usage.prompt_tokens, usage.completion_tokens)
        headers = self._headers(request_id)
        self._finish_headers(headers, started, trace, request_id)
        await send_bytes(send, reply.status, reply.body, reply.content_type.encode(), headers)
        return reply.status

    async def _stream(
        self,
        model: Model,
        request: ClientRequest,
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
                opening, response, state.config.server.keepalive_seconds
            )
        finally:
            if not opening.done():
                opening.cancel()
        result = StreamResult()
        try:
            if not response.started:
                self._finish_headers(response.headers, started, trace, request_id)
            await relay(opened, response, request.include_usage, result)
            watch.stop()
            await response.end()
        finally:
            await opened.aclose()
            state.forwarder.release(trace)
            # Time blocked on upstream reads is the upstream's, not the gateway's.
            trace.upstream_seconds += result.upstream_wait
            m = state.metrics
            if result.first_event_at:
                m.child(m.ttft, model.name).observe(result.first_event_at - started)
            if result.usage is not None:
                self._count_tokens(
                    model.name, result.usage.prompt_tokens, result.usage.completion_tokens
                )
        return 200 if result.error is None else 502

    def _count_tokens(self, model: str, prompt: int, completion: int) -> None:
        m = self._state.metrics
        m.child(m.tokens, model, "prompt").inc(prompt)
        m.child(m.tokens, model, "completion").inc(completion)

    async def _fail(
        self,
        error: GatewayError,
        send: Send,
        request_id: str,
        started: float,
        trace: Trace,
        response: SSEResponse | None,
    ) -> int:
        if response is not None and response.started:
            # Headers (and keep-alives) went out already: report in-band and end the stream.
            await response.error(error)
            await response.end()
            return error.status
        headers = self._headers(request_id)
        self._finish_headers(headers, started, trace, request_id)
        headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
        await send_bytes(send, error.status, openai_envelope(error), JSON, headers)
        return error.status


def proxy_endpoints(state: GatewayState) -> dict[str, ProxyEndpoint]:
    """Path → endpoint for every forwarded OpenAI operation."""
    return {
        "/v1/chat/completions": ProxyEndpoint(state, Operation.CHAT, "chat"),
        "/v1/completions": ProxyEndpoint(state, Operation.COMPLETIONS, "completions"),
        "/v1/embeddings": ProxyEndpoint(state, Operation.EMBEDDINGS, "embeddings"),
    }
