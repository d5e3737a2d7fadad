"""One finished request's spans, built from its ``Call`` record after the answer.

Nothing is timed twice: the request path already keeps every time a span needs (the call's
start, the upstream attempt, the engine queue's wait, time to first chunk, the agent loop's
rounds), so the spans are made afterwards with explicit start and end times, encoded straight
to OTLP protobuf (``protobuf.py`` says why not the SDK) by the batch exporter, many requests at
a time (``exporter.py`` says why then).

Names and attributes follow the OpenTelemetry GenAI semantic conventions: the request's span
is ``{gen_ai.operation.name} {gen_ai.request.model}`` (kind SERVER); children cover the wait for
a local engine (with its swap or load inside), the upstream call (CLIENT), and each agent-loop
round. Per request: one dict lookup finds both spans' unchanging parts (names and the
attributes fixed by route, model, target, status and caller), encoded the first time seen.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.telemetry import protobuf as pb
from gateway.telemetry.exporter import BatchExporter

if TYPE_CHECKING:
    from gateway.config.upstreams import Provider, Target
    from gateway.engines.events import EngineEvents
    from gateway.pipeline.call import Call
    from gateway.telemetry.settings import Export

# gen_ai.operation.name by the pipeline's route (gateway/pipeline/call.py's Dialect.route).
OPERATIONS = {"completions": "text_completion", "embeddings": "embeddings"}
# Stages of a local engine that are a swap or a load (gateway/engines/events.py).
_LOADING = frozenset(("stopping", "starting", "loading", "restoring cache", "sleeping"))
# Encoded span heads kept; past this many (models, targets and routes combined) start over.
_HEADS = 4096
_ALL = 1 << 64
# Attributes that differ per request: encoders with their keys encoded once.
_REQUEST_ID = pb.str_attribute("turnout.request_id")
_TTFT = pb.double_attribute("gen_ai.response.time_to_first_chunk")
_INPUT = pb.int_attribute("gen_ai.usage.input_tokens")
_OUTPUT = pb.int_attribute("gen_ai.usage.output_tokens")
_CACHED = pb.int_attribute("gen_ai.usage.cache_read.input_tokens")
_REASONING = pb.int_attribute("gen_ai.usage.reasoning.output_tokens")
_ERROR_STATUS = b"\x7a\x02\x18\x02"  # status {code: STATUS_CODE_ERROR}
_ZERO_ID = bytes(8)


# What the spans of requests sharing it have in common: route, model, stream, target answered,
# target failed, status, agent id, key id. The cache of encoded heads is keyed by it.
Shared = tuple[str, str, bool, "Target | None", "Target | None", int, str, "str | None"]
# What ``record`` keeps of a finished request until its batch is encoded, copied out of its
# Call so the Call is freed with the request as when tracing is off (held Calls survived into
# the collector's older generations and made its full collections more frequent: measured
# ~11k instructions per request): the Shared key; 32 random bytes (trace id, request span id,
# upstream call span id); request id; start and end (ns since the epoch); time to first
# chunk; input, output, cached and reasoning tokens (input None: no usage); the upstream
# call's start and end (0: none); attempts and failures when it failed over; the spans of
# queue, load and agent rounds, already encoded.
Ended = tuple[
    Shared,
    bytes,
    str,
    int,
    int,
    "float | None",
    "int | None",
    int,
    int,
    "int | None",
    int,
    int,
    "tuple[int, list[str]] | None",
    "list[bytes] | None",
]


class RequestSpans:
    """The gateway's tracer: ``record`` one request's spans; ``close`` sends what waits."""

    def __init__(
        self,
        export: Export,
        providers: Mapping[str, Provider],
        events: EngineEvents | None = None,
    ) -> None:
        self._exporter: BatchExporter[Ended] = BatchExporter(export, self.encode)
        self._providers = providers
        self._events = events
        self._random = random.Random().randbytes
        # Trace ids whose low 64 bits are below this are sampled (as TraceIdRatioBased does).
        self._sampled_below = int(export.sample_ratio * _ALL)
        self._heads: dict[Shared, tuple[bytes, bytes]] = {}

    @property
    def exporter(self) -> BatchExporter[Ended]:
        return self._exporter

    def record(self, route: str, call: Call) -> None:
        """The spans of ``call``, which ended now: what they need taken now, the bytes written
        with the batch they go out in (exporter.py says why)."""
        # The trace id, the request span's id and the upstream call span's, in one draw.
        ids = self._random(32)
        while ids.count(0) >= 8 and _has_zero_id(ids):  # invalid ids: once in 2**62 draws
            ids = self._random(32)
        below = self._sampled_below
        if below < _ALL and int.from_bytes(ids[8:16], "little") >= below:
            return
        trace_ = call.trace
        identity = call.identity
        ts = call.ts
        # From the request path's clock (perf_counter) to the epoch's.
        offset = ts - call.started
        end_ns = int((time.perf_counter() + offset) * 1e9)
        spans = 1
        upstream_start = upstream_end = 0
        started = trace_.upstream_started
        if started:
            spans = 2
            upstream_start = int((started + offset) * 1e9)
            # A stream's upstream call lasts until its last event was read: the end.
            upstream_end = (
                end_ns if call.stream else int((started + trace_.upstream_last + offset) * 1e9)
            )
        usage = call.usage
        prompt: int | None = None
        completion = cached = 0
        reasoning: int | None = None
        if usage is not None:
            prompt, completion, cached = (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
            )
            details = usage.completion_tokens_details
            if details is not None:
                reasoning = details.reasoning_tokens
        rare: list[bytes] | None = None
        if trace_.lease is not None or trace_.phases:
            # Encoded now: the engine events they are read from may be gone by the batch.
            rare = []
            self._rare(rare, ids[:16], ids[16:24], call)
            spans += len(rare)
        shared: Shared = (
            route,
            call.model,
            call.stream,
            trace_.target,
            trace_.failed,
            call.status,
            identity.agent_id,
            identity.key_id,
        )
        failed_over = (trace_.attempts, list(trace_.failures)) if trace_.attempts > 1 else None
        self._exporter.add(
            (
                shared,
                ids,
                call.request_id,
                int(ts * 1e9),
                end_ns,
                call.ttft,
                prompt,
                completion,
                cached,
                reasoning,
                upstream_start,
                upstream_end,
                failed_over,
                rare,
            ),
            spans,
        )

    def encode(self, ended: list[Ended]) -> list[bytes]:
        """The spans of requests that ended, each framed for an export request."""
        spans: list[bytes] = []
        add = spans.append
        known = self._heads.get
        root_ids, child_ids, framed = pb.root_ids, pb.child_ids, pb.framed
        for (
            shared,
            ids,
            request_id,
            start_ns,
            end_ns,
            ttft,
            prompt,
            completion,
            cached,
            reasoning,
            upstream_start,
            upstream_end,
            failed_over,
            rare,
        ) in ended:
            root_head, upstream_head = known(shared) or self._heads_of(shared)
            root_id = ids[16:24]
            # ``ids`` begins with the trace id: root_ids and child_ids take its first 16 bytes.
            root = [root_ids(ids, root_id, start_ns, end_ns), root_head, _REQUEST_ID(request_id)]
            if ttft is not None:
                root.append(_TTFT(ttft))
            if prompt is not None:
                root += (_INPUT(prompt), _OUTPUT(completion), _CACHED(cached))
                if reasoning is not None:
                    root.append(_REASONING(reasoning))
            if failed_over is not None:
                root.append(_failed_over(*failed_over))
            add(framed(b"".join(root)))
            if upstream_start:
                ids_ = child_ids(ids, ids[24:], root_id, upstream_start, upstream_end)
                add(framed(ids_ + upstream_head))
            if rare:
                spans += rare
        return spans

    def _span_id(self) -> bytes:
        random_id = self._random(8)
        while random_id == _ZERO_ID:
            random_id = self._random(8)
        return random_id

    def _heads_of(self, shared: Shared) -> tuple[bytes, bytes]:
        """What many requests' spans share, encoded once for them all: the request span's
        name, kind and attributes fixed by route, model, target, status and caller (and its
        error status), and the upstream call span's name, kind and attributes."""
        route, model, stream, answered, failed, status, agent_id, key_id = shared
        target = answered or failed
        op = OPERATIONS.get(route, "chat")
        fixed: dict[str, pb.AttributeValue] = {
            "gen_ai.operation.name": op,
            "gen_ai.request.model": model,
            "gen_ai.request.stream": stream,
            "turnout.route": route,
        }
        upstream: dict[str, pb.AttributeValue] = {}
        if target is not None:
            provider = self._providers.get(target.provider)
            fixed["gen_ai.provider.name"] = provider.kind if provider else target.provider
            fixed["turnout.provider"] = target.provider
            if answered is not None:
                fixed["gen_ai.response.model"] = target.model
            upstream = {"turnout.provider": target.provider, "gen_ai.response.model": target.model}
        caller: dict[str, pb.AttributeValue] = {"http.response.status_code": status}
        if status >= 400:
            caller["error.type"] = str(status)
        if key_id is not None:
            caller["turnout.key_id"] = key_id
        if agent_id:
            caller["gen_ai.agent.id"] = agent_id
        root = pb.span_head(f"{op} {model}", pb.SERVER, fixed) + pb.attributes(0x4A, caller)
        if status >= 400:
            root += _ERROR_STATUS
        heads = (root, pb.span_head("upstream call", pb.CLIENT, upstream))
        if len(self._heads) >= _HEADS:
            self._heads.clear()
        self._heads[shared] = heads
        return heads

    def _rare(self, spans: list[bytes], trace_id: bytes, root_id: bytes, call: Call) -> None:
        """Engine queue and load, agent-loop rounds: only requests that had them."""
        trace_ = call.trace
        offset = call.ts - call.started

        def ns(counter: float) -> int:
            return int((counter + offset) * 1e9)

        lease = trace_.lease
        if lease is not None and lease.waited > 0 and trace_.upstream_started:
            granted = trace_.upstream_started
            # The gate's own clock starts later than the request's wait (its owner task takes
            # the request in its next turn): the forwarder's mark is where the wait began.
            queued = trace_.gated or granted - lease.waited
            queue_id = self._span_id()
            attributes = {
                "turnout.engine.role": lease.role,
                "turnout.engine.requested": lease.requested,
            }
            head = pb.span_head("queue wait", pb.INTERNAL, attributes)
            spans.append(
                pb.framed(pb.span(trace_id, queue_id, root_id, ns(queued), ns(granted), head))
            )
            load = self._load(lease.role, queued)
            if load is not None:
                start, end, head = load
                span = pb.span(trace_id, self._span_id(), queue_id, start, end, head)
                spans.append(pb.framed(span))
        for name, began, finished in trace_.phases or ():
            head = pb.span_head(name, pb.INTERNAL, {})
            span = pb.span(trace_id, self._span_id(), root_id, ns(began), ns(finished), head)
            spans.append(pb.framed(span))

    def _load(self, role: str, queued: float) -> tuple[int, int, bytes] | None:
        """The swap or load this request waited through, from the engines' own events.

        A swap is the stop of other roles made to give ``role`` room, then its load: the
        engines stopping while this request waited, before ``role`` was ready, are named in
        ``turnout.engine.stopped`` and the span is called "engine swap".
        """
        if self._events is None:
            return None
        recent = self._events.since(queued)
        own = [e for e in recent if role in (e.role, e.subject)]
        loading = [e for e in own if e.stage in _LOADING]
        if not loading:
            return None
        ready = next((e for e in own if e.stage == "ready" and e.at >= loading[0].at), None)
        end = ready.at if ready is not None else loading[-1].at
        stopped = [e for e in recent if e.role != role and e.stage == "stopping" and e.at <= end]
        stages = ",".join(dict.fromkeys(e.stage for e in own))
        attributes: dict[str, pb.AttributeValue] = {
            "turnout.engine.role": role,
            "turnout.engine.stages": stages,
        }
        if stopped:
            attributes["turnout.engine.stopped"] = ",".join(dict.fromkeys(e.role for e in stopped))
        name = "engine swap" if stopped else "engine load"
        start = min(loading[0].at, stopped[0].at) if stopped else loading[0].at
        head = pb.span_head(name, pb.INTERNAL, attributes)
        return int(start * 1e9), int(end * 1e9), head

    async def close(self) -> None:
        await self._exporter.close()


def _has_zero_id(ids: bytes) -> bool:
    """Whether the trace id or a span id in ``ids`` is all zeros (which the spec makes invalid)."""
    return ids[:16] == bytes(16) or ids[16:24] == _ZERO_ID or ids[24:] == _ZERO_ID


def _failed_over(attempts: int, failures: list[str]) -> bytes:
    return pb.attributes(0x4A, {"turnout.attempts": attempts, "turnout.failures": failures})
