"""Finished requests' spans in OTLP protobuf, many at a time: the tracing worker's half.

The gateway's tracer (``spans.py``) keeps of each traced request only what its spans need, as
an ``Item`` of plain values, and ships items to the tracing worker (``worker.py``), which
writes the bytes here and exports them. Everything a request's spans share with many others
(names, kinds, the attributes fixed by route, model, target, status and caller) comes encoded
once, as a numbered ``Heads`` pair the item names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.telemetry import protobuf as pb

# An item as the tracer ships it: heads id; 32 random bytes (trace id, request span id,
# upstream call span id); request id; start and end (ns since the epoch); time to first chunk
# (s); input, output, cached and reasoning tokens (input None: no usage; reasoning None: not
# reported); the upstream call's start and end (0: none); (attempts, failures) when it failed
# over; the spans of engine queue, load and agent rounds, already encoded and framed.
Item = tuple[
    int,
    bytes,
    str,
    int,
    int,
    float | None,
    int | None,
    int,
    int,
    int | None,
    int,
    int,
    tuple[int, list[str]] | None,
    list[bytes] | None,
]
# The request span's head and the upstream call span's head.
Heads = tuple[bytes, bytes]

# Attributes that differ per request: encoders with their keys encoded once.
_REQUEST_ID = pb.str_attribute("turnout.request_id")
_TTFT = pb.double_attribute("gen_ai.response.time_to_first_chunk")
_INPUT = pb.int_attribute("gen_ai.usage.input_tokens")
_OUTPUT = pb.int_attribute("gen_ai.usage.output_tokens")
_CACHED = pb.int_attribute("gen_ai.usage.cache_read.input_tokens")
_REASONING = pb.int_attribute("gen_ai.usage.reasoning.output_tokens")


def span_count(item: Item) -> int:
    """How many spans ``encode`` makes of ``item``."""
    rare = item[13]
    return 1 + (item[10] != 0) + (len(rare) if rare else 0)


def encode(items: Sequence[Item], heads: Mapping[int, Heads]) -> list[bytes]:
    """The spans of ``items``, each framed for an export request. An item whose heads are
    unknown (a worker restarted between a heads message and its items) is left out."""
    spans: list[bytes] = []
    add = spans.append
    root_ids, child_ids, framed = pb.root_ids, pb.child_ids, pb.framed
    for item in items:
        (
            heads_id,
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
        ) = item
        pair = heads.get(heads_id)
        if pair is None:
            continue
        root_head, upstream_head = pair
        root_id = ids[16:24]
        # ``ids`` begins with the trace id: root_ids and child_ids take its first 16 bytes.
        root = [
            root_ids(ids, root_id, start_ns, end_ns),
            root_head,
            _REQUEST_ID(request_id),
        ]
        if ttft is not None:
            root.append(_TTFT(ttft))
        if prompt is not None:
            root += (_INPUT(prompt), _OUTPUT(completion), _CACHED(cached))
            if reasoning is not None:
                root.append(_REASONING(reasoning))
        if failed_over is not None:
            attempts, failures = failed_over
            root.append(
                pb.attributes(0x4A, {"turnout.attempts": attempts, "turnout.failures": failures})
            )
        add(framed(b"".join(root)))
        if upstream_start:
            span_ids = child_ids(ids, ids[24:], root_id, upstream_start, upstream_end)
            add(framed(span_ids + upstream_head))
        if rare:
            spans += rare
    return spans
