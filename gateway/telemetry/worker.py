"""The tracing worker: a child process that encodes the gateway's spans and exports them.

Why a process of its own: drawing ids, writing a request's spans in protobuf and posting them
is Python work that, in the gateway's process, would run on the event loop (or hold the GIL
the loop needs): measured with callgrind, exporting from the gateway's process cost 8.6% more
instructions per request on its event loop; with this worker, 1.8%, and the worker's own
~31,000 (5.6% of the gateway's, on another core). The gateway ships each traced request as a short ``Item`` of plain values
(``encoding.py``), msgpack-framed over a pipe; this process turns them into spans and runs
the batching exporter (``exporter.py``).

Protocol, gateway to worker on stdin: frames of a 4-byte big-endian length, then a kind byte
and a msgpack body: ``E`` the export settings (first, once); ``H`` numbered heads ``[id,
request head, upstream head, stream]``; ``R`` forget the heads (the gateway started over);
``S`` ``[spans, items]``, items and the spans they make. End of input: send what waits and
exit. Worker to gateway on stdout: JSON lines of running totals ``{"sent": n, "failed": n,
"dropped": n}`` and ``{"warning": text}``, which the gateway logs as its own.

    python -m gateway.telemetry.worker
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import struct
import sys
from typing import Any

import msgspec

from gateway.telemetry.encoding import Heads, Item, Templates, encode, prepare
from gateway.telemetry.exporter import BatchExporter
from gateway.telemetry.settings import Export

LENGTH = struct.Struct(">I")
EXPORT, HEADS, RESET, SPANS = b"E", b"H", b"R", b"S"
# How often running totals go back to the gateway (when they changed).
_REPORT_SECONDS = 0.5

_decode_export = msgspec.msgpack.Decoder(dict[str, Any])
_decode_heads = msgspec.msgpack.Decoder(tuple[int, bytes, bytes, bool])
_decode_items = msgspec.msgpack.Decoder(tuple[int, list[Item]])


_encode = msgspec.msgpack.Encoder().encode


def frame(kind: bytes, body: bytes) -> bytes:
    return LENGTH.pack(len(body) + 1) + kind + body


# The gateway's frames, written by its link (link.py) and by the benchmark that feeds a worker.
def export_frame(export: Export) -> bytes:
    return frame(EXPORT, _encode(dataclasses.asdict(export)))


def heads_frame(heads_id: int, heads: Heads) -> bytes:
    return frame(HEADS, _encode((heads_id, *heads)))


def spans_frame(spans: int, items: list[Item]) -> bytes:
    return frame(SPANS, _encode((spans, items)))


RESET_FRAME = frame(RESET, b"")


class _Report(logging.Handler):
    """The exporter's warnings, sent to the gateway to log as its own."""

    def __init__(self, out: asyncio.WriteTransport) -> None:
        super().__init__(logging.WARNING)
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        line = json.dumps({"warning": record.getMessage()}) + "\n"
        self._out.write(line.encode())


async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    return body[:1], body[1:]


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
    logging.getLogger("turnout.telemetry").addHandler(_Report(out))
    logging.getLogger("turnout.telemetry").propagate = False
    first = await _read_frame(reader)
    if first is None or first[0] != EXPORT:
        return
    fields = _decode_export.decode(first[1])
    export = Export(**fields)
    heads: dict[int, Templates] = {}
    exporter: BatchExporter[Item] = BatchExporter(export, lambda items: encode(items, heads))
    reporter = loop.create_task(_report(exporter, out))
    try:
        while (received := await _read_frame(reader)) is not None:
            kind, body = received
            if kind == SPANS:
                spans, items = _decode_items.decode(body)
                exporter.add(items, spans)
            elif kind == HEADS:
                heads_id, root, upstream, stream = _decode_heads.decode(body)
                heads[heads_id] = prepare((root, upstream, stream))
            elif kind == RESET:
                # Items already here still name the old heads: encode them first.
                await exporter.encode_waiting()
                heads.clear()
        await exporter.close()
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        out.write(_totals(exporter))
        out.close()


def _totals(exporter: BatchExporter[Item]) -> bytes:
    totals = {"sent": exporter.sent, "failed": exporter.failed, "dropped": exporter.dropped}
    return (json.dumps(totals) + "\n").encode()


async def _report(exporter: BatchExporter[Item], out: asyncio.WriteTransport) -> None:
    last = b""
    while True:
        await asyncio.sleep(_REPORT_SECONDS)
        line = _totals(exporter)
        if line != last:
            out.write(line)
            last = line


def main() -> None:
    # The worker ends when the gateway's shutdown closes the pipe, after sending what it
    # holds: ended by a signal, it would lose up to a schedule delay of spans. Its own session
    # keeps it out of the gateway's process group (Ctrl-C, ``kill -- -PGID``); SIGTERM to
    # each process, as systemd stops a unit's cgroup, is ignored here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import uvloop  # as the gateway serves (not on Windows)
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
