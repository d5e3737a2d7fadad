"""An upstream that misbehaves on purpose: a real aiohttp server on a loopback port.

It answers 200 with a stream in one of three wire formats, chosen by the path, and then does
what the request's ``model`` names:

==========================  ======================================================================
``comments``                Only keep-alives, every ``interval`` s, for ever: ``: ping`` comments
                            (OpenAI SSE), ``event: ping`` events (Anthropic), blank lines (Ollama).
``content-then-comments``   One content event, ``settle`` s of silence, then keep-alives for ever.
``trickle``                 A content event every ``interval`` s, for ever.
``drip``                    One content event, one byte every ``interval`` s.
``huge``                    One event (NDJSON: line) of ``huge_bytes`` with no terminator, then
                            silence until the client leaves.
``content-then-huge``       One content event, ``settle`` s of silence, then ``huge``.
``unknown-encoding``        A normal short stream, labelled ``Content-Encoding: compress``.
``crlf``                    One content event and the end, with CRLF line ends split between
                            two writes (OpenAI SSE only).
==========================  ======================================================================

Paths: ``POST /v1/chat/completions`` (OpenAI SSE), ``POST /v1/messages`` (Anthropic SSE),
``POST /api/chat`` (Ollama NDJSON), ``GET /v1/models`` and ``GET /api/version`` (probes).
``fault.requests`` counts the POSTs each fault received.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.server import LoopbackServer, serve

_OPENAI_CHUNK = (
    b'data: {"id":"chatcmpl-f","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
)
_ANTHROPIC_START = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_f","type":"message","role":"assistant",'
    b'"model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":1,"output_tokens":0}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
)
_ANTHROPIC_DELTA = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n'
)
_OLLAMA_LINE = (
    b'{"model":"m","created_at":"2026-01-01T00:00:00Z",'
    b'"message":{"role":"assistant","content":"x"},"done":false}\n'
)


@dataclass(frozen=True, slots=True)
class Wire:
    """One wire format: what a content event, a keep-alive and an unfinished event look like."""

    content_type: str
    first: bytes  # the first content (Anthropic: message_start and a block start, then a delta)
    content: bytes
    keepalive: bytes
    huge_head: bytes


_WIRES = {
    "/v1/chat/completions": Wire(
        "text/event-stream", _OPENAI_CHUNK, _OPENAI_CHUNK, b": ping\n\n", b"data: "
    ),
    "/v1/messages": Wire(
        "text/event-stream",
        _ANTHROPIC_START + _ANTHROPIC_DELTA,
        _ANTHROPIC_DELTA,
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b"event: content_block_delta\ndata: ",
    ),
    "/api/chat": Wire("application/x-ndjson", _OLLAMA_LINE, _OLLAMA_LINE, b"\n", b'{"model":"'),
}


class FaultUpstream(LoopbackServer):
    def __init__(
        self, *, interval: float = 0.05, settle: float = 0.5, huge_bytes: int = 2 * 1024 * 1024
    ) -> None:
        self.interval = interval
        self.settle = settle
        self.huge_bytes = huge_bytes
        self.requests: Counter[str] = Counter()
        self._runner: web.ServerRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        self._runner, self._port = await serve(self._handle, shutdown_timeout=0.5)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            body: dict[str, Any] = (
                {"version": "0.12.6"} if request.path == "/api/version" else {"data": []}
            )
            return web.json_response(body)
        wire = _WIRES.get(request.path)
        if wire is None:
            return web.json_response({"error": "not found"}, status=404)
        fault = str(json.loads(await request.read()).get("model", ""))
        self.requests[fault] += 1
        resp = web.StreamResponse(headers={"Content-Type": wire.content_type})
        if fault == "unknown-encoding":
            resp.headers["Content-Encoding"] = "compress"
        await resp.prepare(request)
        try:
            await self._play(fault, wire, resp)
        except ConnectionError:
            pass  # the gateway gave up on us: that is the point
        return resp

    async def _play(self, fault: str, wire: Wire, resp: web.StreamResponse) -> None:
        if fault == "crlf":
            data = (wire.first + b"data: [DONE]\n\n").replace(b"\n", b"\r\n")
            cut = data.index(b"\r\n\r\n") + 1  # one write ends in "\r", the next starts "\n"
            await resp.write(data[:cut])
            await asyncio.sleep(self.interval)
            await resp.write(data[cut:])
            return
        if fault.startswith("content-then-") or fault in ("trickle", "unknown-encoding"):
            await resp.write(wire.first)
            if fault.startswith("content-then-"):
                # Let the first event reach the client on its own: a fault arriving in the same
                # read as the first event is (rightly) a fault before anything was sent.
                await asyncio.sleep(self.settle)
            fault = fault.removeprefix("content-then-")
        if fault == "unknown-encoding":
            return
        if fault == "drip":
            for byte in _bytes(wire.first):
                await asyncio.sleep(self.interval)
                await resp.write(byte)
        elif fault == "huge":
            await resp.write(wire.huge_head)
            left = self.huge_bytes
            while left > 0:
                await resp.write(b"x" * min(left, 65536))
                left -= 65536
        repeat = {"comments": wire.keepalive, "trickle": wire.content}.get(fault)
        while True:  # until the gateway hangs up (the handler is then cancelled)
            await asyncio.sleep(self.interval)
            if repeat is not None:
                await resp.write(repeat)


def _bytes(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))
