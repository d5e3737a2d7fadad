"""Finished requests' spans in OTLP protobuf, many at a time: the tracing worker's half.

The gateway's tracer (``spans.py``) keeps of each traced request only what its spans need, as
an ``Item`` of plain values, and ships items to the tracing worker (``worker.py``), which
writes the bytes here and exports them. Everything a request's spans share with many others
(names, kinds, the attributes fixed by route, model, target, status and caller) comes encoded
once, as a numbered ``Heads`` pair the item names.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from gateway.telemetry import protobuf as pb

# An item as the tracer ships it, the request's values as the request path keeps them (the
# arithmetic that turns them into a span is done here, off the event loop): heads id; 32
# random bytes (trace id, request span id, upstream call span id), or None for "draw them
# here" (the tracer draws them only when it encodes rare spans that need them); request id;
# the request's start on the epoch's clock, its start and end on ``time.perf_counter()``'s;
# time to first chunk (s); the upstream call's start (perf_counter, 0: none) and seconds; the
# input, output, cached and reasoning tokens (input None: no usage reported; reasoning None:
# not reported); (attempts, failures) when it failed over; the spans of engine queue, load
# and agent rounds, already encoded and framed.
Item = tuple[
    int,
    bytes | None,
    str,
    float,
    float,
    float,
    float | None,
    float,
    float,
    int | None,
    int | None,
    int | None,
    int | None,
    tuple[int, list[str]] | None,
    list[bytes] | None,
]
# The request span's head, the upstream call span's head, and whether the upstream call lasts
# until the request ends (a stream's, whose last event is read at the end).
Heads = tuple[bytes, bytes, bool]
# Heads made ready for ``encode`` (``prepare``): the request span's head and its size with the
# ids and times; the upstream call span's pack (``pb.child_template``) and frame prefix, its
# head; stream as in Heads.
Templates = tuple[bytes, int, Callable[..., bytes], bytes, bytes, bool]

# Attributes that differ per request: encoders with their keys encoded once.
_REQUEST_ID = pb.str_attribute("turnout.request_id")
_TTFT = pb.double_attribute("gen_ai.response.time_to_first_chunk")
_INPUT = pb.int_attribute("gen_ai.usage.input_tokens")
_OUTPUT = pb.int_attribute("gen_ai.usage.output_tokens")
_CACHED = pb.int_attribute("gen_ai.usage.cache_read.input_tokens")
_REASONING = pb.int_attribute("gen_ai.usage.reasoning.output_tokens")
_ZERO_ID = bytes(8)
# Random bytes for the ids of items that come without (most): a generator of this process.
_DRAW = random.Random().randbytes


def span_ids(draw: Callable[[int], bytes]) -> bytes:
    """A trace id, the request span's id and the upstream call span's, in one draw of 32
    random bytes; drawn again if one is all zeros (invalid: once in 2**62 draws)."""
    ids = draw(32)
    while ids.count(0) >= 8 and (
        ids[:16] == bytes(16) or ids[16:24] == _ZERO_ID or ids[24:] == _ZERO_ID
    ):
        ids = draw(32)
    return ids


def prepare(heads: Heads) -> Templates:
    root_head, upstream_head, stream = heads
    pack, prefix = pb.child_template(upstream_head)
    return root_head, pb.ROOT_FIXED + len(root_head), pack, prefix, upstream_head, stream


def encode(items: Sequence[Item], heads: Mapping[int, Templates]) -> list[bytes]:
    """The spans of ``items``, each framed for an export request. An item whose heads are
    unknown (a worker restarted between a heads message and its items) is left out."""
    spans: list[bytes] = []
    add = spans.append
    root_framed = pb.ROOT_FRAMED.pack
    # The ids of every item in one draw; if any eight bytes in a row are zeros (once in 2**59
    # batches), each item draws its own instead.
    draw = _DRAW
    pool = draw(32 * len(items))
    if _ZERO_ID in pool:
        pool = b""
    at = 0
    for item in items:
        (
            heads_id,
            ids,
            request_id,
            ts,
            started,
            ended,
            ttft,
            upstream_started,
            upstream_seconds,
            prompt,
            completion,
            cached,
            reasoning,
            failed_over,
            rare,
        ) = item
        templates = heads.get(heads_id)
        if templates is None:
            continue
        root_head, root_fixed, upstream_pack, upstream_prefix, upstream_head, stream = templates
        if ids is None:
            if pool:
                ids = pool[at : at + 32]
                at += 32
            else:
                ids = span_ids(draw)
        # From the request path's clock (perf_counter) to the epoch's.
        offset = ts - started
        start_ns = int(ts * 1e9)
        end_ns = int((ended + offset) * 1e9)
        root_id = ids[16:24]
        # The request span's attributes of this request alone, after its head.
        tail = _REQUEST_ID(request_id)
        if ttft is not None:
            tail += _TTFT(ttft)
        if prompt is not None:
            tail += _INPUT(prompt) + _OUTPUT(completion or 0) + _CACHED(cached or 0)
            if reasoning is not None:
                tail += _REASONING(reasoning)
        if failed_over is not None:
            attempts, failures = failed_over
            tail += pb.attributes(
                0x4A, {"turnout.attempts": attempts, "turnout.failures": failures}
            )
        # ``ids`` begins with the trace id: the packs take its first 16 bytes.
        size = root_fixed + len(tail)
        if 0x80 <= size < 0x4000:
            head = root_framed(
                0x12, size & 0x7F | 0x80, size >> 7, 0x100A, ids, 0x0812, root_id, 0x39,
                start_ns, 0x41, end_ns,
            )  # fmt: skip
            add(head + root_head + tail)
        else:
            add(pb.framed(pb.root_ids(ids, root_id, start_ns, end_ns) + root_head + tail))
        if upstream_started:
            upstream_start = int((upstream_started + offset) * 1e9)
            upstream_end = (
                end_ns if stream else int((upstream_started + upstream_seconds + offset) * 1e9)
            )
            span = upstream_pack(
                upstream_prefix, 0x100A, ids, 0x0812, ids[24:], 0x0822, root_id, 0x39,
                upstream_start, 0x41, upstream_end, upstream_head,
            )  # fmt: skip
            add(span)
        if rare:
            spans += rare
    return spans
