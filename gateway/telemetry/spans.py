"""The gateway's tracer: what one finished request's spans need, taken from its ``Call``.

Nothing is timed twice: the request path already keeps every time a span needs (the call's
start, the upstream attempt, the engine queue's wait, time to first chunk, the agent loop's
rounds), so the spans are made afterwards with explicit start and end times. Here, on the event
loop, a request costs only the values its spans need, copied into a short item of plain
values (``encoding.Item``); the tracing worker process draws the ids, turns clocks into
timestamps, writes the protobuf and exports it (``worker.py`` says why a process). Measured
with callgrind, each step moved off the loop counts: this copy costs about half of what
drawing ids and converting times here did.

Names and attributes follow the OpenTelemetry GenAI semantic conventions: the request's span
is ``{gen_ai.operation.name} {gen_ai.request.model}`` (kind SERVER); children cover the wait for
a local engine (with its swap or load inside), the upstream call (CLIENT), and each agent-loop
round. What both spans share with many requests (names and the attributes fixed by route,
model, target, status and caller) is encoded here once, numbered, and sent to the worker once;
an item names it by number. Queue, load and agent-round spans (rare: only requests that had
them) are encoded here as the request ends, because the engine events they read do not last.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.telemetry import protobuf as pb
from gateway.telemetry.encoding import Heads, span_ids
from gateway.telemetry.link import InlineLink, Link, WorkerLink

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
_ERROR_STATUS = pb.field(0x7A, b"\x18" + pb.varint(pb.STATUS_ERROR))  # Span.status
_ZERO_ID = bytes(8)


# What the spans of requests sharing it have in common: route, model, stream, target answered,
# target failed, status, agent id, key id. The cache of encoded heads is keyed by it.
Shared = tuple[str, str, bool, "Target | None", "Target | None", int, str, "str | None"]


class RequestSpans:
    """The gateway's tracer: ``record`` one request's spans; ``close`` sends what waits."""

    def __init__(
        self,
        export: Export,
        providers: Mapping[str, Provider],
        events: EngineEvents | None = None,
        in_worker: bool = True,
        link: Link | None = None,
    ) -> None:
        if link is None:
            link = WorkerLink(export) if in_worker else InlineLink(export)
        self._link = link
        self._providers = providers
        self._events = events
        generator = random.Random()
        self._random = generator.randbytes
        self._draw = generator.random
        self._ratio = export.sample_ratio
        self._sampling = export.sample_ratio < 1.0
        # Each distinct Shared's heads are encoded once, numbered, and sent to the worker.
        self._heads: dict[Shared, int] = {}
        self._next_heads = 0

    @property
    def exporter(self) -> Link:
        return self._link

    def record(self, route: str, call: Call) -> None:
        """The spans of ``call``, which ended now: its values taken as they are, the spans
        made of them in the worker (``encoding.encode``), with the batch they go out in."""
        # Sampled as TraceIdRatioBased would: ids are drawn later, and nothing is propagated.
        if self._sampling and self._draw() >= self._ratio:
            return
        ended = time.perf_counter()
        trace_ = call.trace
        identity = call.identity
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
        heads_id = self._heads.get(shared)
        if heads_id is None:
            heads_id = self._new_heads(shared)
        upstream_started = trace_.upstream_started
        spans = 2 if upstream_started else 1
        ids = rare = None
        lease = trace_.lease
        if trace_.phases is not None or (lease is not None and lease.waited > 0):
            # Encoded now, with ids drawn here: the engine events they read may be gone later.
            ids = span_ids(self._random)
            rare = self._rare(ids[:16], ids[16:24], call)
            spans += len(rare)
        # Token counts as plain ints, not the usage struct: an item of atomic values only is
        # untracked by the garbage collector at its first pass, where one holding the struct
        # was carried through the older generations until shipped (measured on streams: the
        # loop's GC time per request +6 to +10 µs, more than the rest of tracing).
        usage = call.usage
        prompt = completion = cached = reasoning = None
        if usage is not None:
            prompt, completion, cached = (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
            )
            reported = usage.completion_tokens_details
            if reported is not None:
                reasoning = reported.reasoning_tokens
        self._link.add(
            (
                heads_id,
                ids,
                call.request_id,
                call.ts,
                call.started,
                ended,
                call.ttft,
                upstream_started,
                trace_.upstream_last,
                prompt,
                completion,
                cached,
                reasoning,
                (trace_.attempts, trace_.failures) if trace_.attempts > 1 else None,
                rare,
            ),
            spans,
        )

    def _span_id(self) -> bytes:
        random_id = self._random(8)
        while random_id == _ZERO_ID:
            random_id = self._random(8)
        return random_id

    def _new_heads(self, shared: Shared) -> int:
        """Numbers and encodes what many requests' spans share, once for them all, and gives it
        to the worker: the request span's name, kind and attributes fixed by route, model,
        target, status and caller (and its error status), and the upstream call span's."""
        if len(self._heads) >= _HEADS:
            self._heads.clear()
            self._link.reset_heads()
        # Never reused: items already shipped may still name an earlier number.
        heads_id = self._next_heads
        self._next_heads += 1
        self._heads[shared] = heads_id
        self._link.heads(heads_id, self._encode_heads(shared))
        return heads_id

    def _encode_heads(self, shared: Shared) -> Heads:
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
        return root, pb.span_head("upstream call", pb.CLIENT, upstream), stream

    def _rare(self, trace_id: bytes, root_id: bytes, call: Call) -> list[bytes]:
        """Engine queue and load, agent-loop rounds: only requests that had them."""
        spans: list[bytes] = []
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
        return spans

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
        await self._link.close()
