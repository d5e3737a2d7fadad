"""An OTLP/HTTP trace receiver on a loopback port: what a collector's ``otlphttp`` receiver does
for traces, decoding each export with the official opentelemetry-proto messages.

Usage::

    async with OtlpReceiver() as receiver:     # receiver.url: http://127.0.0.1:PORT
        ...                                      # an SDK exporting to receiver.url
        spans = receiver.spans()                 # every span received, flattened

Only ``POST /v1/traces`` with ``application/x-protobuf`` (optionally gzip) is accepted, as the
OpenTelemetry Python exporter sends it; anything else gets a 404 or 415, which that exporter
reports as a failed export (``GET /health`` answers 200, for readiness polls).

As a process, for benchmarks (bench/telemetry.py), it decodes and counts spans until SIGTERM::

    python -m tests.fakes.otlp_receiver --port 4318
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import signal
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.fakes.server import LoopbackServer, serve

PROTOBUF = "application/x-protobuf"


@dataclass
class ReceivedSpan:
    name: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any] = field(default_factory=dict)


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind is None:
        return None
    return getattr(value, kind)


class OtlpReceiver(LoopbackServer):
    def __init__(
        self, keep: bool = True, port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        # keep=False (a long benchmark): decode and count, but keep nothing.
        self._keep = keep
        self._port = port
        self._ssl = ssl_context
        self.span_count = 0
        self.export_count = 0
        self.exports: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self._runner: web.ServerRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self._runner, port = await serve(self._handle, port=self._port, ssl_context=self._ssl)
        self.url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/health":
            return web.Response(text="ok")
        if request.method != "POST" or request.path != "/v1/traces":
            return web.Response(status=404)
        if request.content_type != PROTOBUF:
            return web.Response(status=415)
        data = await request.read()
        # aiohttp's server already undoes a Content-Encoding it knows; a body still gzip-framed
        # was compressed without saying so, which a collector would refuse to parse as well.
        if request.headers.get("Content-Encoding") == "gzip" and data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        export = ExportTraceServiceRequest()
        export.ParseFromString(data)
        self.export_count += 1
        self.span_count += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        if self._keep:
            self.exports.append(export)
            self.headers.append(dict(request.headers))
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type=PROTOBUF)

    def spans(self) -> list[ReceivedSpan]:
        found: list[ReceivedSpan] = []
        for export in self.exports:
            for resource_spans in export.resource_spans:
                resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(
                            ReceivedSpan(
                                name=span.name,
                                trace_id=span.trace_id,
                                span_id=span.span_id,
                                parent_span_id=span.parent_span_id,
                                kind=span.kind,
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                                attributes={a.key: value_of(a.value) for a in span.attributes},
                                status_code=span.status.code,
                                resource=resource,
                            )
                        )
        return found


async def _serve(port: int) -> None:
    async with OtlpReceiver(keep=False, port=port) as receiver:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        print(
            f"otlp receiver: {receiver.span_count} spans in {receiver.export_count} exports",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="An OTLP/HTTP trace receiver on loopback.")
    parser.add_argument("--port", type=int, default=4318)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
