"""The one request pipeline every client protocol goes through (OpenAI, Anthropic, Responses).

Raw ASGI on purpose (see ``gateway/asgi.py``): this is the only code every request runs.
What differs per protocol is a ``Dialect``: how a body becomes an ``Exchange`` (the OpenAI chat
request plus how to answer in the client's protocol), what an error looks like before the
stream starts, and what keeps an idle stream alive. OpenAI's own endpoints are the dialect
whose exchange passes bytes through (``gateway/api/proxy.py``).

Per request, in order: who is calling (key, agent), what they asked for (model), may they
(permissions, budget, rate limits), plugins' before_upstream (chat only), forward with
fallback, answer, then record one usage row, release the rate-limit slot and hand the answer
to plugins' after_response (off the request path), whatever happened in between.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import msgspec

from gateway.asgi import (
    JSON,
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
)
from gateway.auth import may_use, speaking_for
from gateway.config import Model, Target
from gateway.contract import Operation, WireProtocol
from gateway.errors import (
    BudgetExceeded,
    ClientGone,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    RateLimited,
)
from gateway.forwarder import Trace
from gateway.identity import ANONYMOUS, Identity
from gateway.plugins.capture import CapturingStream, reply_text
from gateway.plugins.context import Exchanged, Forwarding, RequestContext
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.policy import estimate_tokens
from gateway.state import GatewayState
from gateway.streaming import SSEResponse, StreamTranslator, wait_with_keepalive
from gateway.usage import UsageRecord
from gateway.wire import ClientRequest, Usage

log = logging.getLogger("turnout.ingress")

_INTERNAL = GatewayError("internal gateway error; see the gateway log for the request id")


def new_request_id() -> str:
    return os.urandom(12).hex()


class Exchange(Protocol):
    request: ClientRequest

    def reply(self, body: bytes, protocol: WireProtocol) -> tuple[bytes, Usage | None]: ...

    def stream(self) -> StreamTranslator: ...


def exchange_reply(
    exchange: Exchange, body: bytes, protocol: WireProtocol, target: Target | None
) -> tuple[bytes, Usage | None]:
    return exchange.reply(body, protocol)


@dataclass(frozen=True, slots=True)
class Dialect:
    """One client protocol, as the shared endpoint needs it."""

    # Label for metrics and the usage log ("chat", "messages", "responses", ...).
    route: str
    # Decodes and translates a request body; raises BadRequest.
    prepare: Callable[[bytes, Scope], Exchange]
    # The protocol's error envelope for an error before the stream starts.
    error_body: Callable[[GatewayError, str], bytes]
    # Sent every keepalive interval while the upstream has not said anything yet.
    keepalive: bytes
    # Header that carries the request id in this protocol, besides x-request-id.
    id_header: bytes | None = None
    # Renders a whole (non-streamed) answer, told which target served it: seed 004's answer
    # names its provider and upstream model. Most protocols use the exchange's own reply.
    # ``protocol`` is what the upstream answered in (``UpstreamReply.protocol``).
    render: Callable[[Exchange, bytes, WireProtocol, Target | None], tuple[bytes, Usage | None]] = (
        exchange_reply
    )


class Call:
    """What one request learned on its way through, for headers, metrics and its usage row."""

    __slots__ = (
        "admission",
        "body_bytes",
        "capture",
        "chunks",
        "forwarder",
        "hooked",
        "identity",
        "model",
        "reply_text",
        "request_id",
        "sent_bytes",
        "started",
        "status",
        "stream",
        "trace",
        "ts",
        "ttft",
        "usage",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.ts = time.time()
        self.started = time.perf_counter()
        self.identity: Identity = ANONYMOUS
        self.model = "-"
        self.status = 500
        self.stream = False
        self.trace = Trace()
        self.usage: Usage | None = None
        self.ttft: float | None = None
        self.admission: Admission | None = None
        # The forwarder that answers: the gateway's own, or a plugin's stand-in for it (the
        # tools plugin's agent loop).
        self.forwarder: Forwarding | None = None
        self.body_bytes = 0
        self.sent_bytes = 0
        # Upstream stream events relayed: what a cut-short stream's completion is estimated from.
        self.chunks = 0
        # Set when plugins' request hooks ran; the answer's text only when one asked for it.
        self.hooked: RequestContext | None = None
        self.capture: CapturingStream | None = None
        self.reply_text: str | None = None


class IngressEndpoint:
    """One request in a client protocol, forwarded as OpenAI chat with fallback."""

    def __init__(self, state: GatewayState, dialect: Dialect) -> None:
        self._state = state
        self._dialect = dialect
        # Refusals always carry x-ratelimit-* (they are raised with them); admitted answers
        # only when routing.yaml asks for OpenAI's every-answer behaviour.
        self._limit_headers = state.config.limits.headers == "always"

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
        state = self._state
        metrics = state.metrics
        metrics.inflight.inc()
        call = Call(request_id)
        watch: DisconnectWatch | None = None
        response: SSEResponse | None = None
        translator: StreamTranslator | None = None
        try:
            call.identity = state.auth.identify(scope)
            body = await read_body(scope, receive, state.config.server.max_body_bytes)
            call.body_bytes = len(body)
            exchange = dialect.prepare(body, scope)
            request = exchange.request
            call.stream = request.stream
            model = self._resolve(request)
            call.model = model.name
            call.identity = speaking_for(call.identity, scope, request.fields)
            await self._admit(call, model, request)
            watch = DisconnectWatch(receive)
            if state.plugins.active and request.op is Operation.CHAT:
                request = await self._before_upstream(call, model, request, scope)
                exchange.request = request
            # A plugin may answer in the forwarder's stead (the tools plugin's agent loop, for a
            # request naming server-side tools); one attribute read when none can.
            call.forwarder = (
                state.plugins.forwarder_for(
                    state.forwarder, call.identity, request_id, model, request
                )
                if state.plugins.wraps_forwarder
                else None
            ) or state.forwarder
            if request.stream:
                response = SSEResponse(send, self._headers(request_id))
                translator = exchange.stream()
                if call.hooked is not None and call.hooked.capture_reply:
                    translator = call.capture = CapturingStream(translator)
                call.status = await self._stream(call, model, request, translator, response, watch)
            else:
                call.status = await self._complete(call, model, exchange, send, watch)
        except GatewayError as exc:
            call.status = await self._fail(call, exc, send, response, translator)
        except ClientGone:
            call.status = 499
        except asyncio.CancelledError:
            if watch is None or not watch.absorb():
                raise
            call.status = 499
            metrics.child(metrics.disconnects, dialect.route).inc()
        except Exception:
            log.exception("request %s failed inside the gateway", request_id)
            call.status = await self._fail(call, _INTERNAL, send, response, translator)
        finally:
            if watch is not None:
                watch.stop()
            metrics.inflight.dec()
            await self._finish(call)

    # --- before forwarding -------------------------------------------------------------------

    def _resolve(self, request: ClientRequest) -> Model:
        model = self._state.models.resolve(request.model)
        if model is None:
            available = ", ".join(self._state.models.names()) or "(none)"
            raise ModelNotFound(
                f"model {request.model!r} not found; available models: {available}", param="model"
            )
        return model

    async def _admit(self, call: Call, model: Model, request: ClientRequest) -> None:
        """Permissions, budget and rate limits: every refusal before any upstream is touched."""
        state = self._state
        identity = call.identity
        if not may_use(identity, model.name):
            raise Forbidden(f"this key may not use model {model.name!r}", param="model")
        if identity.key_id is not None:
            budget = state.budgets.left(identity.key_id)
            if budget is not None and budget <= 0:
                raise BudgetExceeded(f"key {identity.key_id} has used up its budget")
        limiter = state.limiter
        scopes = limiter.scopes(identity, model.name)
        if not scopes:
            return
        estimate = estimate_tokens(call.body_bytes, request.max_tokens())
        admission = limiter.admit_nowait(scopes, estimate) or await limiter.admit(scopes, estimate)
        if not admission.allowed:
            raise RateLimited(admission.message(), headers=dict(_decoded(admission.headers())))
        call.admission = admission

    async def _before_upstream(
        self, call: Call, model: Model, request: ClientRequest, scope: Scope
    ) -> ClientRequest:
        """Plugins' request hooks; the request to forward (without its native body if edited)."""
        fields = request.fields
        hooked = call.hooked = RequestContext(
            call.request_id,
            call.identity,
            model.name,
            self._dialect.route,
            fields,
            request.stream,
            self._state,
        )
        session = header(scope, b"x-session-id")
        if session:
            hooked.session_id = session.decode("latin-1")[:256]
        before = dict(fields) if request.native is not None else None
        await self._state.plugins.before_upstream(hooked)
        if before is not None and _edited(before, fields):
            # An upstream that speaks the client's own protocol would be sent the original
            # body and miss what plugins changed: it gets the edited translation instead.
            return replace(request, native=None)
        return request

    # --- answering -----------------------------------------------------------------------------

    def _headers(self, request_id: str) -> Headers:
        value = request_id.encode()
        headers = [(b"x-request-id", value)]
        if self._dialect.id_header is not None:
            headers.append((self._dialect.id_header, value))
        return headers

    def _finish_headers(self, headers: Headers, call: Call) -> None:
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

    async def _complete(
        self, call: Call, model: Model, exchange: Exchange, send: Send, watch: DisconnectWatch
    ) -> int:
        assert call.forwarder is not None
        reply = await call.forwarder.send(model, exchange.request, call.request_id, call.trace)
        watch.stop()
        if call.hooked is not None and call.hooked.capture_reply:
            call.reply_text = reply_text(reply.body)
        body, call.usage = self._dialect.render(
            exchange, reply.body, reply.protocol, call.trace.target
        )
        headers = self._headers(call.request_id)
        self._finish_headers(headers, call)
        call.sent_bytes = len(body)
        await send_bytes(send, reply.status, body, JSON, headers)
        return reply.status

    async def _stream(
        self,
        call: Call,
        model: Model,
        request: ClientRequest,
        translator: StreamTranslator,
        response: SSEResponse,
        watch: DisconnectWatch,
    ) -> int:
        state = self._state
        trace = call.trace
        forwarder = call.forwarder
        assert forwarder is not None
        opening = asyncio.get_running_loop().create_task(
            forwarder.open_stream(model, request, call.request_id, trace)
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
        sent = 0
        chunks = 1
        try:
            if not response.started:
                self._finish_headers(response.headers, call)
            await response.start()
            try:
                translator.begin(opened.protocol)
                out = translator.feed(opened.first)
                if out:
                    sent += len(out)
                    await response.write(out)
                call.ttft = time.perf_counter() - call.started
                events = opened.events
                while True:
                    before = time.perf_counter()
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                    wait += time.perf_counter() - before
                    chunks += 1
                    out = translator.feed(event)
                    if out:
                        sent += len(out)
                        await response.write(out)
                closing = translator.finish()
            except GatewayError as exc:
                # After the 200: the error travels in-band, in the protocol's own event.
                failed = True
                closing = [translator.fail(exc)]
            for piece in closing:
                if piece:
                    await response.write(piece)
            watch.stop()
            await response.end()
        finally:
            # Runs on disconnects too: the tokens streamed so far still get counted.
            call.sent_bytes = sent
            call.chunks = chunks
            call.usage = translator.usage
            await opened.aclose()
            forwarder.release(trace)
            # Time blocked on upstream reads is the upstream's, not the gateway's.
            trace.upstream_seconds += wait
        return 502 if failed else 200

    async def _fail(
        self,
        call: Call,
        error: GatewayError,
        send: Send,
        response: SSEResponse | None,
        translator: StreamTranslator | None,
    ) -> int:
        if response is not None and response.started and translator is not None:
            # Keep-alives (or more) went out: the 200 is committed, so the error goes in-band.
            await response.write(translator.fail(error))
            await response.end()
            return error.status
        headers = self._headers(call.request_id)
        self._finish_headers(headers, call)
        headers.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
        await send_bytes(
            send, error.status, self._dialect.error_body(error, call.request_id), JSON, headers
        )
        return error.status

    # --- after answering ---------------------------------------------------------------------

    async def _finish(self, call: Call) -> None:
        """Metrics, the usage row and the rate-limit slot: for every request, however it ended."""
        state = self._state
        metrics = state.metrics
        route = self._dialect.route
        trace = call.trace
        elapsed = time.perf_counter() - call.started
        overhead = max(0.0, elapsed - trace.upstream_seconds)
        metrics.child(metrics.requests, route, call.model, str(call.status)).inc()
        metrics.child(metrics.duration, route, call.model).observe(elapsed)
        metrics.child(metrics.overhead, route).observe(overhead)
        if call.ttft is not None:
            metrics.child(metrics.ttft, call.model).observe(call.ttft)
        usage = call.usage
        estimated = usage is None and trace.target is not None
        prompt = completion = cached = 0
        if usage is not None:
            prompt, completion, cached = (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
            )
        elif estimated:
            # No usage from the upstream (or the client left before it came): a guess, marked.
            prompt, completion = call.body_bytes // 4, _estimated_completion(call)
        if prompt or completion:
            metrics.child(metrics.tokens, call.model, "prompt").inc(prompt)
            metrics.child(metrics.tokens, call.model, "completion").inc(completion)
        if cached:
            provider = trace.target.provider if trace.target is not None else "-"
            metrics.child(metrics.cached_tokens, call.model, provider).inc(cached)
        admission = call.admission
        if admission is not None:
            actual = prompt + completion if (prompt or completion) else None
            if not admission.release_nowait(actual):
                await admission.release(actual)
        if call.hooked is not None:
            text = call.capture.text() if call.capture is not None else call.reply_text
            state.plugins.after_response(call.hooked, Exchanged(call.status, text, usage))
        if state.usage is None:
            return
        target = trace.target
        lease = trace.lease
        notes = ""
        if trace.failures or call.status == 499 or (lease is not None and lease.note):
            notes = _notes(call, lease.note if lease is not None else "")
        identity = call.identity
        record = UsageRecord(
            ts=call.ts,
            request_id=call.request_id,
            agent_id=identity.agent_id,
            ingress=route,  # type: ignore[arg-type]
            model=call.model,
            status=call.status,
            duration_ms=elapsed * 1000,
            key_id=identity.key_id,
            project=identity.project,
            channel=identity.channel,
            role=lease.role if lease else None,
            provider=target.provider if target else None,
            upstream_model=target.model if target else None,
            stream=call.stream,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            estimated=estimated,
            ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
            overhead_ms=overhead * 1000,
            notes=notes,
        )
        state.record_usage(record)


def _estimated_completion(call: Call) -> int:
    """Completion tokens of an answer whose usage never came, from what was relayed.

    A stream counts its upstream events, not their bytes (SSE framing and JSON run ~12 bytes
    a token; counting bytes logged a 10-token reply as 119): llama.cpp, MLX, Ollama and OpenAI
    send about one token per chunk, after one opening chunk that carries only the role.
    Counting costs the relay one integer add per event and no decoding. A whole answer
    without usage (rare) is its JSON bytes at a rough 6 a token.
    """
    if call.stream:
        return max(0, call.chunks - 1)
    return call.sent_bytes // 6


def _notes(call: Call, lease_note: str) -> str:
    """Fallbacks, swaps and disconnects, for humans reading the usage log."""
    notes = [n for n in (lease_note, *call.trace.failures) if n]
    if call.status == 499:
        notes.append("client disconnected")
    return "; ".join(notes)[:1000]


def _edited(before: dict[str, msgspec.Raw], after: dict[str, msgspec.Raw]) -> bool:
    """Did plugins change any field? Values are immutable, so a change is a new object."""
    return len(before) != len(after) or any(after.get(k) is not v for k, v in before.items())


def _decoded(headers: Headers) -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in headers]
