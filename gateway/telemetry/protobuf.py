"""OTLP's trace messages in protobuf's wire format, written by hand for the few shapes turnout sends.

Why not the OpenTelemetry SDK: measured on this machine, its span objects cost ~57 µs per
request (two spans: start_span's attribute validation, context, processor) on the event loop,
and its OTLP encoder another ~99 µs in the exporter's thread, which holds the GIL the event loop
needs: together a third of what a whole proxied request costs (~450 µs), against a 5% budget.
Writing the bytes directly, with each span's unchanging part (name and the attributes fixed
by route, model and target) encoded once and reused, costs a few microseconds.

Field numbers are those of opentelemetry-proto (trace/v1/trace.proto, common/v1/common.proto,
collector/trace/v1/trace_service.proto); tests/test_telemetry.py decodes what this writes with
the official generated messages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence

# Span.kind (trace.proto SpanKind)
INTERNAL, SERVER, CLIENT = 1, 2, 3
# Status.code
STATUS_ERROR = 2

AttributeValue = str | bool | int | float | list[str]

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
# A span's ids and times in one pack: trace_id, span_id, [parent_span_id], start and end, each
# behind its tag (little-endian H: the two tag bytes in wire order). The ids are random bytes
# (random ints of 64 bits are three-digit Python ints, which struct converts byte by byte).
_ROOT = struct.Struct("<H16sH8sBQBQ")
_CHILD = struct.Struct("<H16sH8sH8sBQBQ")
# The request span framed for an export request in the same pack, when its size takes a
# two-byte varint (as a request's span does): the ScopeSpans.spans tag and the size's two
# bytes, then as _ROOT.
ROOT_FRAMED = struct.Struct("<BBB" + _ROOT.format[1:])
ROOT_FIXED = _ROOT.size


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    # The lengths a span's numbers have (token counts, sizes) without a loop: this runs
    # several times per request.
    if n < 0x80:
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def root_ids(trace_id: bytes, span_id: bytes, start_ns: int, end_ns: int) -> bytes:
    """A parentless span's trace_id, span_id and times (the request's span). Ids longer than
    their field are cut to it (struct's ``s``): a caller may pass a longer run of random bytes
    that begins with the id."""
    return _ROOT.pack(0x100A, trace_id, 0x0812, span_id, 0x39, start_ns, 0x41, end_ns)


def child_template(head: bytes) -> tuple[Callable[..., bytes], bytes]:
    """A framed child span with ``head`` whose ids and times are all that vary: its size is
    known now, so the frame's prefix is too. Returns the pack of prefix, ids, times and head
    (arguments as ``_CHILD.pack``'s between the prefix and the head) and the prefix."""
    prefix = b"\x12" + varint(_CHILD.size + len(head))
    layout = f"<{len(prefix)}s{_CHILD.format[1:]}{len(head)}s"
    return struct.Struct(layout).pack, prefix


def int_attribute(key: str) -> Callable[[int], bytes]:
    """An encoder of one Span.attributes entry with an int value under ``key``.

    Everything before the value's varint depends only on the varint's length: built once per
    length, so an attribute costs one concatenation per request.
    """
    prefix = key_prefix(key)
    heads = [b""] + [
        b"\x4a" + varint(len(prefix) + 2 + size) + prefix + bytes((size + 1, 0x18))
        for size in range(1, 11)
    ]
    # Whole attributes for 0..127 (flags, small counts), and the common two-byte case inline:
    # a call to ``varint`` costs more than the rest.
    small = [heads[1] + bytes((n,)) for n in range(0x80)]
    two = heads[2]

    def encode(n: int) -> bytes:
        if 0 <= n < 0x80:
            return small[n]
        if 0 < n < 0x4000:
            return two + bytes((n & 0x7F | 0x80, n >> 7))
        value = varint(n)
        return heads[len(value)] + value

    return encode


def double_attribute(key: str) -> Callable[[float], bytes]:
    """An encoder of one Span.attributes entry with a double value under ``key`` (fixed size)."""
    prefix = key_prefix(key)
    head = b"\x4a" + varint(len(prefix) + 10) + prefix + b"\x09\x21"

    def encode(x: float) -> bytes:
        return head + _DOUBLE(x)

    return encode


def str_attribute(key: str) -> Callable[[str], bytes]:
    """An encoder of one Span.attributes entry with a string value under ``key``; the part
    before the text is kept per text length (request ids mostly have one length)."""
    prefix = key_prefix(key)
    heads: dict[int, bytes] = {}

    def encode(text: str) -> bytes:
        data = text.encode()
        size = len(data)
        head = heads.get(size)
        if head is None:
            value = b"\x0a" + varint(size)
            kv = len(prefix) + len(varint(len(value) + size)) + len(value) + size
            head = b"\x4a" + varint(kv) + prefix + varint(len(value) + size) + value
            if len(heads) < 256:
                heads[size] = head
        return head + data

    return encode


def framed(span: bytes) -> bytes:
    """A Span as an entry of ScopeSpans.spans, ready to be joined into an export request."""
    size = len(span)
    if 0x80 <= size < 0x4000:  # what a request's spans measure
        return bytes((0x12, size & 0x7F | 0x80, size >> 7)) + span
    return b"\x12" + varint(size) + span


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field; ``tag`` is (number << 3) | 2, below 128 here."""
    return bytes((tag,)) + varint(len(payload)) + payload


def any_value(value: AttributeValue) -> bytes:
    # bool before int: a bool is an int to Python.
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, list):
        return field(0x2A, b"".join(field(0x0A, any_value(v)) for v in value))
    return field(0x0A, value.encode())


def key_value(key: str, value: AttributeValue) -> bytes:
    """One KeyValue, as a repeated ``attributes`` field (Span 9, Resource 1: both tag below)."""
    return field(0x0A, key.encode()) + field(0x12, any_value(value))


def key_prefix(key: str) -> bytes:
    """What precedes a value in a KeyValue: its key, then the value's tag. Built once per key."""
    return field(0x0A, key.encode()) + b"\x12"


def attributes(tag: int, values: Mapping[str, AttributeValue]) -> bytes:
    return b"".join(field(tag, key_value(k, v)) for k, v in values.items())


def span(
    trace_id: bytes,
    span_id: bytes,
    parent_id: bytes,
    start_ns: int,
    end_ns: int,
    head: bytes,
    tail: bytes = b"",
    error: bool = False,
) -> bytes:
    """A Span message. ``head``: its name, kind and fixed attributes (``span_head``), encoded
    once; ``tail``: attributes of this request (``attributes(0x4A, ...)``)."""
    parts = [b"\x0a\x10", trace_id, b"\x12\x08", span_id]
    if parent_id:
        parts += (b"\x22\x08", parent_id)
    parts += (head, b"\x39", _FIXED64(start_ns), b"\x41", _FIXED64(end_ns), tail)
    if error:
        parts.append(b"\x7a\x02\x18\x02")  # status {code: STATUS_CODE_ERROR}
    return b"".join(parts)


def span_head(name: str, kind: int, fixed: Mapping[str, AttributeValue]) -> bytes:
    return field(0x2A, name.encode()) + b"\x30" + varint(kind) + attributes(0x4A, fixed)


def export_request(
    resource: Mapping[str, AttributeValue], scope: tuple[str, str], spans: Sequence[bytes]
) -> bytes:
    """ExportTraceServiceRequest: one ResourceSpans holding one ScopeSpans of ``spans``, each
    already ``framed``. The messages' sizes are added up first, so the batch is copied once
    (a join), not once per enclosing message."""
    scope_message = field(0x0A, scope[0].encode()) + field(0x12, scope[1].encode())
    scope_head = field(0x0A, scope_message)
    scope_size = len(scope_head) + sum(map(len, spans))
    resource_message = field(0x0A, attributes(0x0A, resource))
    scope_field = b"\x12" + varint(scope_size)
    resource_size = len(resource_message) + len(scope_field) + scope_size
    head = b"\x0a" + varint(resource_size) + resource_message + scope_field + scope_head
    return b"".join((head, *spans))
