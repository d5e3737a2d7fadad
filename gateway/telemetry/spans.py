"""One finished request's spans, built from its ``Call`` record after the answer.

Nothing is timed twice: the request path already keeps every time a span needs (the call's
start, the upstream attempt, the engine queue's wait, time to first chunk, the agent loop's
rounds), so the spans are made afterwards with explicit start and end times, encoded straight
to OTLP protobuf (``protobuf.py`` says why not the SDK) and handed to the batch exporter.

Names and attributes follow the OpenTelemetry GenAI semantic conventions: the request's span
is ``{gen_ai.operation.name} {gen_ai.request.model}`` (kind SERVER); children cover the wait for
a local engine (with its swap or load inside), the upstream call (CLIENT), and each agent-loop
round. Per request: one dict lookup finds the span's unchanging part (name and the attributes
fixed by route, model and target), encoded the first time it was seen.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.telemetry import protobuf as pb
from gateway.telemetry.exporter import BatchExporter
from gateway.wire import Usage

if TYPE_CHECKING:
    from gateway.config.upstreams import Provider, Target
    from gateway.engines.events import EngineEvents
    from gateway.forwarder import Trace
    from gateway.pipeline.call import Call
    from gateway.telemetry.settings import Export

# gen_ai.operation.name by the pipeline's route (gateway/pipeline/call.py's Dialect.route).
OPERATIONS = {"completions": "text_completion", "embeddings": "embeddings"}
# Stages of a local engine that are a swap or a load (gateway/engines/events.py).
_LOADING = frozenset(("stopping", "starting", "loading", "restoring cache", "sleeping"))
# Encoded span heads kept; past this many (models, targets and routes combined) start over.
_HEADS = 4096
_ALL = 1 << 64
# Keys of the attributes that differ per request, encoded once.
_REQUEST_ID = pb.key_prefix("turnout.request_id")
_TTFT = pb.key_prefix("gen_ai.response.time_to_first_chunk")
_INPUT = pb.key_prefix("gen_ai.usage.input_tokens")
_OUTPUT = pb.key_prefix("gen_ai.usage.output_tokens")
_CACHED = pb.key_prefix("gen_ai.usage.cache_read.input_tokens")
_REASONING = pb.key_prefix("gen_ai.usage.reasoning.output_tokens")
# Whether the usage the adapters report can say how many tokens were reasoning: asked of the
# type once, since asking an instance for a field it lacks raises and catches each time.
_REPORTS_REASONING = "completion_tokens_details" in Usage.__struct_fields__


class RequestSpans:
    """The gateway's tracer: ``record`` one request's spans; ``close`` sends what waits."""

    def __init__(
        self,
        export: Export,
        providers: Mapping[str, Provider],
        events: EngineEvents | None = None,
    ) -> None:
        self._exporter = BatchExporter(export)
        self._providers = providers
        self._events = events
        self._bits = random.Random().getrandbits
        # Trace ids whose low 64 bits are below this are sampled (as TraceIdRatioBased does).
        self._sampled_below = int(export.sample_ratio * _ALL)
        self._heads: dict[tuple[object, ...], bytes] = {}

    @property
    def exporter(self) -> BatchExporter:
        return self._exporter

    def record(self, route: str, call: Call) -> None:
        """The spans of ``call``, which ended now."""
        bits = self._bits
        trace_lo = bits(64)
        if trace_lo >= self._sampled_below:
            return
        trace_hi = bits(64)
        root_id = bits(64) or 1
        offset = call.ts - call.started
        ended = int((time.perf_counter() + offset) * 1e9)
        trace_ = call.trace
        root = [
            pb.root_ids(trace_hi, trace_lo, root_id, int(call.ts * 1e9), ended),
            self._root_head(route, call),
            self._tail(call),
        ]
        if call.status >= 400:
            root.append(b"\x7a\x02\x18\x02")  # status {code: STATUS_CODE_ERROR}
        spans = [b"".join(root)]
        started = trace_.upstream_started
        if started:
            # A stream's upstream call lasts until its last event was read: the end.
            end = ended if call.stream else int((started + trace_.upstream_last + offset) * 1e9)
            ids = pb.child_ids(
                trace_hi, trace_lo, bits(64) or 1, root_id, int((started + offset) * 1e9), end
            )
            spans.append(ids + self._upstream_head(trace_.target or trace_.failed))
        if trace_.lease is not None or trace_.phases:
            trace_id = trace_hi.to_bytes(8, "little") + trace_lo.to_bytes(8, "little")
            self._rare(spans, trace_id, root_id.to_bytes(8, "little"), trace_, offset)
        self._exporter.add(spans)

    def _span_id(self) -> bytes:
        return (self._bits(64) or 1).to_bytes(8, "little")

    def _root_head(self, route: str, call: Call) -> bytes:
        trace_ = call.trace
        target = trace_.target or trace_.failed
        key = (route, call.model, call.stream, target, trace_.target is not None)
        head = self._heads.get(key)
        if head is None:
            op = OPERATIONS.get(route, "chat")
            fixed: dict[str, pb.AttributeValue] = {
                "gen_ai.operation.name": op,
                "gen_ai.request.model": call.model,
                "gen_ai.request.stream": call.stream,
                "turnout.route": route,
            }
            if target is not None:
                provider = self._providers.get(target.provider)
                fixed["gen_ai.provider.name"] = provider.kind if provider else target.provider
                fixed["turnout.provider"] = target.provider
                if trace_.target is not None:
                    fixed["gen_ai.response.model"] = target.model
            head = self._remember(key, pb.span_head(f"{op} {call.model}", pb.SERVER, fixed))
        return head

    def _tail(self, call: Call) -> bytes:
        """The root span's attributes of this request: those shared by many (status, caller)
        encoded once, the rest (id, timing, tokens) each time."""
        identity = call.identity
        key = ("tail", call.status, identity.agent_id, identity.key_id)
        shared = self._heads.get(key)
        if shared is None:
            shared = self._remember(key, pb.attributes(0x4A, _caller_attributes(call)))
        parts = [shared, pb.attribute(_REQUEST_ID, pb.str_value(call.request_id))]
        if call.ttft is not None:
            parts.append(pb.attribute(_TTFT, pb.double_value(call.ttft)))
        usage = call.usage
        if usage is not None:
            parts.append(pb.int_attribute(_INPUT, usage.prompt_tokens))
            parts.append(pb.int_attribute(_OUTPUT, usage.completion_tokens))
            parts.append(pb.int_attribute(_CACHED, usage.cached_tokens))
            if _REPORTS_REASONING:
                reasoning = _reasoning_tokens(usage)
                if reasoning is not None:
                    parts.append(pb.int_attribute(_REASONING, reasoning))
        trace_ = call.trace
        if trace_.attempts > 1:
            failed_over: dict[str, pb.AttributeValue] = {
                "turnout.attempts": trace_.attempts,
                "turnout.failures": list(trace_.failures),
            }
            parts.append(pb.attributes(0x4A, failed_over))
        return b"".join(parts)

    def _upstream_head(self, target: Target | None) -> bytes:
        key = ("upstream", target)
        head = self._heads.get(key)
        if head is None:
            fixed: dict[str, pb.AttributeValue] = {}
            if target is not None:
                fixed = {"turnout.provider": target.provider, "gen_ai.response.model": target.model}
            head = self._remember(key, pb.span_head("upstream call", pb.CLIENT, fixed))
        return head

    def _remember(self, key: tuple[object, ...], head: bytes) -> bytes:
        if len(self._heads) >= _HEADS:
            self._heads.clear()
        self._heads[key] = head
        return head

    def _rare(
        self, spans: list[bytes], trace_id: bytes, root_id: bytes, trace_: Trace, offset: float
    ) -> None:
        """Engine queue and load, agent-loop rounds: only requests that had them."""

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
            spans.append(pb.span(trace_id, queue_id, root_id, ns(queued), ns(granted), head))
            load = self._load(lease.role, queued)
            if load is not None:
                start, end, head = load
                spans.append(pb.span(trace_id, self._span_id(), queue_id, start, end, head))
        for name, began, finished in trace_.phases or ():
            head = pb.span_head(name, pb.INTERNAL, {})
            spans.append(pb.span(trace_id, self._span_id(), root_id, ns(began), ns(finished), head))

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


def _caller_attributes(call: Call) -> dict[str, pb.AttributeValue]:
    attributes: dict[str, pb.AttributeValue] = {"http.response.status_code": call.status}
    if call.status >= 400:
        attributes["error.type"] = str(call.status)
    identity = call.identity
    if identity.key_id is not None:
        attributes["turnout.key_id"] = identity.key_id
    if identity.agent_id:
        attributes["gen_ai.agent.id"] = identity.agent_id
    return attributes


def _reasoning_tokens(usage: object) -> int | None:
    """Reasoning tokens, where the upstream's usage reports them."""
    details = getattr(usage, "completion_tokens_details", None)
    value = getattr(details, "reasoning_tokens", None) if details is not None else None
    return value if isinstance(value, int) else None
