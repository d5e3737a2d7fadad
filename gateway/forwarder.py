"""Sends one client request to a model's targets in the router's order, falling back on failure.

Fallback happens only before the client has received anything: for a non-streaming call
that is the whole call; for a stream it is up to and including the first upstream event, so
an upstream that accepts a stream and dies before saying anything is still replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import msgspec

from adapters.base import Adapter, UpstreamReply, UpstreamRequest, UpstreamStream, native_for
from gateway.config.upstreams import Model, Provider, Routing, Target
from gateway.contract import WireProtocol
from gateway.engines.supervisor import Lease
from gateway.errors import (
    AllTargetsFailed,
    NoTargetAvailable,
    StaleConnection,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatus,
)
from gateway.metrics import Metrics
from gateway.router import backoff_delay, plan, should_fall_back, target_key
from gateway.targets import TargetBook
from gateway.translate import sse_fields
from gateway.translate.prefix import RequestShaper
from gateway.wire import ClientRequest

T = TypeVar("T")

log = logging.getLogger("turnout.forwarder")

# Sending again on a new connection after a pooled one turned out closed: more than one in a
# row happens when several idle connections were closed together; past this, it is a failure.
MAX_RESENDS = 3


@dataclass(slots=True)
class Trace:
    """What one request's attempts did: for response headers, metrics and logs."""

    attempts: int = 0
    upstream_seconds: float = 0.0
    target: Target | None = None
    # The last target that failed: a request no target answered still names the upstream that
    # refused it in the usage log (an upstream's 429 is not turnout's own rate limit).
    failed: Target | None = None
    failures: list[str] = field(default_factory=list)
    # Set when a local target failed and a cloud one answered (response header, usage notes).
    fallback: str = ""
    # Held while a local engine serves this request; released with the answer.
    lease: Lease | None = None
    # The local role this request is queued for, while it is (set by the gate): a stream that
    # waits shows that role's loading stages (gateway/pipeline/progress.py).
    engine_role: str = ""
    # Whose request this is (the identity's agent id): the engine gate weighs it by
    # engines.agent_priority.
    agent: str = ""
    # The last attempt's start (``time.perf_counter()``) and seconds: traces' upstream span.
    upstream_started: float = 0.0
    upstream_last: float = 0.0
    # When the last attempt asked the engine gate for its local role (``time.perf_counter()``):
    # where traces' queue-wait span begins. Only requests for local roles set it.
    gated: float = 0.0
    # Timed steps worth a span of their own (the agent loop's rounds): (name, start, end) in
    # ``time.perf_counter()``; None until one is added, which only such steps do.
    phases: list[tuple[str, float, float]] | None = None
    # Sent here by a peer turnout (its hop header): served here, never sent to a peer again.
    hopped: bool = False

    def add_phase(self, name: str, started: float) -> None:
        """A step that began at ``started`` and ends now."""
        if self.phases is None:
            self.phases = []
        self.phases.append((name, started, time.perf_counter()))


class Gate(Protocol):
    """Holds requests for targets that need preparing first (local engine roles)."""

    def handles(self, target: Target) -> bool: ...

    async def enter(
        self, target: Target, request: ClientRequest, trace: Trace
    ) -> tuple[Lease, Target]: ...

    def release(self, lease: Lease) -> None: ...


class Peering(Protocol):
    """Other turnouts serving copies of local roles (gateway/peers/fleet.py)."""

    def order(
        self, model: Model, targets: list[Target], hopped: bool, now: float
    ) -> list[Target]: ...

    def stops(self, target: Target, error: UpstreamError) -> bool: ...


@dataclass(slots=True)
class OpenStream:
    """A stream that has produced its first event; the relay continues ``events``."""

    stream: UpstreamStream
    events: AsyncIterator[bytes]
    first: bytes
    # What the events are written in: OpenAI's chunks, or the native body's own protocol.
    protocol: WireProtocol = WireProtocol.OPENAI
    # Gives back the target's in-flight count and the engine lease: closing the stream is
    # the one cleanup duty its owner has.
    release: Callable[[], None] | None = None

    async def aclose(self) -> None:
        try:
            # Adapters written as async generators get closed too; one interrupted mid-await
            # (a cancelled relay) refuses, and closing the stream below releases it anyway.
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):
                    await aclose()
            await self.stream.aclose()
        finally:
            release, self.release = self.release, None
            if release is not None:
                release()


class Forwarder:
    def __init__(
        self,
        routing: Routing,
        providers: Mapping[str, Provider],
        adapters: Mapping[str, Adapter],
        book: TargetBook,
        metrics: Metrics,
        rng: random.Random | None = None,
        gate: Gate | None = None,
        shapers: Mapping[str, RequestShaper] | None = None,
        peering: Peering | None = None,
    ) -> None:
        self._gate = gate
        self._peering = peering
        self._routing = routing
        self._providers = providers
        self._adapters = adapters
        self._book = book
        self._metrics = metrics
        self._rng = rng or random.Random()
        # Per provider, what its requests go through first (see gateway/translate/prefix.py).
        self._shapers = shapers or {}

    async def send(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> UpstreamReply:
        reply = await self._with_fallback(model, request, request_id, trace, _send)
        self._release(trace)
        return reply

    async def open_stream(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> OpenStream:
        """The caller owns the result and must ``aclose()`` it: that releases the target."""
        opened = await self._with_fallback(
            model, request, request_id, trace, _open_with_first_event
        )
        opened.release = lambda: self._release(trace)
        return opened

    def _release(self, trace: Trace) -> None:
        """The target's in-flight count and the engine lease go back: called once per request,
        by ``send`` or by the ``OpenStream`` it returned (whose ``aclose`` drops it after use)."""
        if trace.target is not None:
            self._book.finished(target_key(trace.target))
        if trace.lease is not None and self._gate is not None:
            self._gate.release(trace.lease)

    async def _with_fallback(
        self,
        model: Model,
        request: ClientRequest,
        request_id: str,
        trace: Trace,
        attempt: Callable[[Adapter, UpstreamRequest], Awaitable[T]],
    ) -> T:
        last: UpstreamError | None = None
        local_failure: Target | None = None
        for pass_number in range(self._routing.retries + 1):
            if pass_number:
                retry_after = last.retry_after if isinstance(last, UpstreamStatus) else None
                await asyncio.sleep(
                    backoff_delay(pass_number, self._routing, self._rng, retry_after)
                )
            # A weighted draw seeded by the affinity key: the same key, the same order.
            rng = (
                random.Random(request.affinity)
                if request.affinity and model.balance == "weighted"
                else self._rng
            )
            targets = plan(model, self._providers, self._book, time.monotonic(), rng)
            if self._peering is not None:
                targets = self._peering.order(model, targets, trace.hopped, time.monotonic())
            if not targets:
                raise NoTargetAvailable(_no_target_message(model, self._providers))
            for target in targets:
                outcome = await self._try(target, request, request_id, trace, attempt)
                if not isinstance(outcome, UpstreamError):
                    if trace.attempts > 1:
                        self._metrics.child(self._metrics.fallbacks, model.name).inc()
                        if local_failure is not None:
                            self._left_local(model, local_failure, target, request_id, trace)
                    return outcome
                if not should_fall_back(outcome) or (
                    self._peering is not None and self._peering.stops(target, outcome)
                ):
                    raise outcome
                last = outcome
                if local_failure is None and self._providers[target.provider].is_local:
                    local_failure = target
        assert last is not None
        raise _all_failed(model, trace, last)

    def _left_local(
        self, model: Model, local: Target, served: Target, request_id: str, trace: Trace
    ) -> None:
        """A local target failed and a cloud one answered: the user pays for it, so say so."""
        if self._providers[served.provider].is_local:
            return
        local_key, served_key = target_key(local), target_key(served)
        trace.fallback = f"{local_key} failed; served by cloud {served_key}"
        why = next((f for f in trace.failures if f.startswith(local_key + ": ")), local_key)
        log.warning(
            "request %s for model %s: local target failed (%s); served by cloud target %s",
            request_id,
            model.name,
            why,
            served_key,
        )
        m = self._metrics
        m.child(m.cloud_fallbacks, model.name, local.provider, served.provider).inc()

    async def _try(
        self,
        target: Target,
        request: ClientRequest,
        request_id: str,
        trace: Trace,
        attempt: Callable[[Adapter, UpstreamRequest], Awaitable[T]],
    ) -> T | UpstreamError:
        """One attempt; returns the error instead of raising so the loop reads as policy."""
        lease: Lease | None = None
        if self._gate is not None and self._gate.handles(target):
            trace.gated = time.perf_counter()
            try:
                lease, target = await self._gate.enter(target, request, trace)
            except UpstreamError as exc:
                trace.attempts += 1
                trace.failures.append(f"{target_key(target)}: {exc.message}")
                return exc
        try:
            outcome = await self._call(target, request, request_id, trace, attempt)
        except BaseException:
            if lease is not None and self._gate is not None:
                self._gate.release(lease)
            raise
        if isinstance(outcome, UpstreamError):
            if lease is not None and self._gate is not None:
                self._gate.release(lease)
        else:
            trace.lease = lease
        return outcome

    async def _call(
        self,
        target: Target,
        request: ClientRequest,
        request_id: str,
        trace: Trace,
        attempt: Callable[[Adapter, UpstreamRequest], Awaitable[T]],
    ) -> T | UpstreamError:
        key = target_key(target)
        adapter = self._adapters[target.provider]
        shape = self._shapers.get(target.provider)
        fields = request.fields if shape is None else shape(request.fields)
        upstream = UpstreamRequest(
            request.op,
            fields,
            target.model,
            request.stream,
            request_id,
            native_for(adapter, request.native),
            request.translated,
        )
        trace.attempts += 1
        self._book.started(key)
        started = trace.upstream_started = time.perf_counter()
        m = self._metrics
        resends = 0
        try:
            while True:
                try:
                    result = await attempt(adapter, upstream)
                    break
                except StaleConnection:
                    # A pooled connection the upstream had closed; it never answered (see
                    # adapters/connections.py). Inline, so success pays no extra await.
                    if resends == MAX_RESENDS:
                        raise
                    resends += 1
                    m.child(m.reconnects, target.provider).inc()
        except UpstreamError as exc:
            self._book.finished(key)
            if exc.retryable:
                # A refusal of this request (a 400, a 501) says nothing of the target's health:
                # it must not cool the target down for the requests after it.
                self._book.failed(key, time.monotonic(), exc.message)
            trace.failures.append(f"{key}: {exc.message}")
            trace.failed = target
            m.child(m.upstream, target.provider, target.model, exc.code or "error").inc()
            return exc
        except BaseException:
            self._book.finished(key)
            raise
        finally:
            elapsed = trace.upstream_last = time.perf_counter() - started
            trace.upstream_seconds += elapsed
            m.child(m.upstream_duration, target.provider).observe(elapsed)
        self._book.succeeded(key)
        m.child(m.upstream, target.provider, target.model, "ok").inc()
        trace.target = target
        return result


class _AnyObject(msgspec.Struct):
    """Decodes any JSON object and builds nothing: msgspec validates and skips every field."""


_JSON_OBJECT = msgspec.json.Decoder(_AnyObject)


def _problem(data: bytes) -> str | None:
    """Why ``data`` is not one JSON object, or None when it is."""
    try:
        _JSON_OBJECT.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"{exc} (starts {data[:60]!r})"
    return None


async def _send(adapter: Adapter, request: UpstreamRequest) -> UpstreamReply:
    reply = await adapter.send(request)
    # A 200 that is not JSON (cut short, a proxy's HTML error page) is the upstream's failure,
    # found here while another target can still answer. One validating pass that builds
    # nothing; the body is decoded for real only after the commit.
    problem = _problem(reply.body)
    if problem is not None:
        raise UpstreamProtocolError(
            f"upstream answered 200 with a body that is not JSON: {problem}"
        )
    return reply


async def _open_with_first_event(adapter: Adapter, request: UpstreamRequest) -> OpenStream:
    stream = await adapter.open_stream(request)
    events = aiter(stream)
    try:
        first = await anext(events)
        _check_first_event(first)
    except StopAsyncIteration:
        await stream.aclose()
        raise UpstreamProtocolError("stream ended before its first event") from None
    except BaseException:
        await stream.aclose()
        raise
    # An adapter given a native body answers in its protocol (adapters/base.py).
    native = request.native
    return OpenStream(stream, events, first, native.protocol if native else WireProtocol.OPENAI)


def _check_first_event(event: bytes) -> None:
    """The first event commits the stream to this upstream, so it must be real SSE data.

    Only this one event is decoded; the relay passes the rest through untouched.
    """
    name, data = sse_fields(event)
    if name == b"error":
        raise UpstreamProtocolError(f"upstream stream began with an error: {data[:300]!r}")
    if data == b"[DONE]":
        return
    if not data:
        raise UpstreamProtocolError(f"upstream stream began with no data event: {event[:100]!r}")
    problem = _problem(data)
    if problem is not None:
        raise UpstreamProtocolError(f"upstream stream began with an invalid event: {problem}")


def _no_target_message(model: Model, providers: Mapping[str, Provider]) -> str:
    reasons = []
    for target in model.targets:
        provider = providers.get(target.provider)
        if provider is None:
            continue
        if provider.missing_env:
            reasons.append(f"{target.provider}: {', '.join(provider.missing_env)} not set")
        elif model.local_only and not provider.is_local:
            reasons.append(f"{target.provider}: not local and the model is local_only")
    detail = "; ".join(reasons) or "no targets configured"
    return f"model {model.name!r} has no usable target ({detail})"


def _all_failed(model: Model, trace: Trace, last: UpstreamError) -> AllTargetsFailed:
    message = (
        f"all {trace.attempts} attempts for model {model.name!r} failed; last: {trace.failures[-1]}"
    )
    return AllTargetsFailed(message, last)
