"""Upstream fault categories: hangs, gzip, broken 200s, huge events, a large Responses stream.

Every case asks the gateway for a logical model whose first target is the misbehaving upstream
(``bench/campaign_upstream.py``, behaviour by model name); ``<behaviour>-fb`` models have a
healthy second target, so the right answer there is the fallback's text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.campaign_http import (
    Answer,
    Case,
    Category,
    post_json,
    run_cases,
    sse_events,
    sse_valid,
    stream_error,
)
from bench.campaign_upstream import OK_TEXT, ZIP_TEXT
from bench.procs import cpu_seconds, memory_kb

INGRESS = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
MAIN_INGRESS = ("chat", "messages", "responses")
CLOSED = b"\n[connection closed by the gateway]"


def body_for(ingress: str, model: str, stream: bool) -> dict[str, Any]:
    """The smallest valid request of each protocol."""
    messages = [{"role": "user", "content": "hi"}]
    bodies: dict[str, dict[str, Any]] = {
        "chat": {"model": model, "messages": messages, "max_tokens": 8, "stream": stream},
        "messages": {"model": model, "messages": messages, "max_tokens": 8, "stream": stream},
        "responses": {"model": model, "input": "hi", "max_output_tokens": 8, "stream": stream},
        "completions": {"model": model, "prompt": "hi", "max_tokens": 8, "stream": stream},
        "embeddings": {"model": model, "input": "hi"},
    }
    return bodies[ingress]


@dataclass
class Gateway:
    """A running ``turnout serve`` as the cases see it."""

    origin: str
    pid: int
    client: aiohttp.ClientSession
    keys: dict[str, str] = field(default_factory=dict)  # key name → secret
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request

    @property
    def port(self) -> int:
        return int(self.origin.rsplit(":", 1)[1])

    def url(self, path: str) -> str:
        return self.origin + path

    async def ask(self, ingress: str, model: str, stream: bool) -> Answer:
        body = body_for(ingress, model, stream)
        return await post_json(self.client, self.url(INGRESS[ingress]), body, self.headers)


def errored(answer: Answer) -> tuple[bool, str]:
    """A clean failure: an error envelope (not a 500), or a 200 stream that ends in an error."""
    if answer.status >= 400:
        clean = answer.status != 500 and answer.envelope
        return clean, ("error envelope " if clean else "bad error ") + answer.brief()
    if answer.status == 200 and stream_error(answer.body) and sse_valid(answer.body):
        return True, "200 stream ending in an error event"
    if answer.status == 200 and answer.aborted and sse_valid(answer.body):
        return True, "200 stream closed by the gateway"
    return False, "relayed " + answer.brief()


def fell_back(answer: Answer, stream: bool) -> tuple[bool, str]:
    valid = sse_valid(answer.body) if stream else answer.json() is not None
    if answer.status == 200 and valid and OK_TEXT.encode() in answer.body:
        return True, "fallback served"
    return False, "no fallback: " + answer.brief()


def _hang_case(gw: Gateway, behaviour: str, ingress: str, fallback: bool) -> Case:
    stream = behaviour != "drip"
    model = behaviour + ("-fb" if fallback else "")

    async def check() -> tuple[bool, str]:
        answer = await gw.ask(ingress, model, stream)
        if behaviour == "trickle":  # content was sent: no fallback possible, only an end
            return (
                True,
                f"stream ended ({'error event' if stream_error(answer.body) else 'closed'})",
            )
        return fell_back(answer, stream) if fallback else errored(answer)

    return Case(f"{model} {ingress} {'stream' if stream else 'non-stream'}", check)


async def hangs(gw: Gateway, limit: float) -> Category:
    """``: ping``-only stream, 1 byte/s body, endless trickle: each must end within its deadline."""
    category = Category("upstream hangs")
    cases = [
        _hang_case(gw, behaviour, ingress, fallback)
        for behaviour in ("comments", "drip", "trickle")
        for ingress in MAIN_INGRESS
        for fallback in (False, True)
    ]
    await run_cases(category, cases, limit)
    return category


def _gzip_cases(gw: Gateway) -> Iterator[Case]:
    combos = [(e, i, s) for e in ("gzip", "deflate") for i in MAIN_INGRESS for s in (False, True)]
    combos += [("gzip", "completions", False), ("gzip", "completions", True)]
    combos += [("gzip", "embeddings", False)]
    # gzip sent unasked: decoded, or a clean error; never raw bytes to the client.
    combos += [("forcegzip", i, s) for i in MAIN_INGRESS for s in (False, True)]
    for encoding, ingress, stream in combos:

        async def check(encoding: str = encoding, ingress: str = ingress, stream: bool = stream) -> tuple[bool, str]:  # fmt: skip
            answer = await gw.ask(ingress, encoding, stream)
            sent = answer.headers.get("Content-Encoding", "identity").lower()
            if answer.status != 200:
                return errored(answer) if encoding == "forcegzip" else (False, answer.brief())
            if sent != "identity":
                return False, f"answer in {sent} to a client that asked for identity"
            if stream:
                ok = sse_valid(answer.body) and bool(sse_events(answer.body))
                ok = ok and ZIP_TEXT.encode() in answer.body
            else:
                data = answer.json()
                ok = data is not None and (
                    ingress == "embeddings" or ZIP_TEXT in answer.body.decode()
                )
            return ok, "decoded" if ok else "raw or broken: " + answer.brief()

        yield Case(f"{encoding} {ingress} {'stream' if stream else 'non-stream'}", check)


async def gzip(gw: Gateway, limit: float) -> Category:
    category = Category("gzip upstream")
    await run_cases(category, list(_gzip_cases(gw)), limit)
    return category


def _broken_case(gw: Gateway, behaviour: str, ingress: str, fallback: bool) -> Case:
    stream = behaviour == "badsse"
    model = behaviour + ("-fb" if fallback else "")

    async def check() -> tuple[bool, str]:
        answer = await gw.ask(ingress, model, stream)
        return fell_back(answer, stream) if fallback else errored(answer)

    return Case(f"{model} {ingress}", check)


async def broken(gw: Gateway, limit: float) -> Category:
    """Truncated JSON, an HTML page, invalid SSE, all as 200: an upstream failure, not an answer."""
    category = Category("broken 200")
    cases = [
        _broken_case(gw, behaviour, ingress, fallback)
        for behaviour in ("truncated", "html", "badsse")
        for ingress in MAIN_INGRESS
        for fallback in (False, True)
    ]
    await run_cases(category, cases, limit)
    return category


class StallProbe:
    """GET /health every 20 ms while a case runs: the longest answer is the gateway's stall."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        async with aiohttp.ClientSession() as client:
            while True:
                self._asked = time.perf_counter()
                async with client.get(self._gw.url("/health")) as response:
                    await response.read()
                self.worst = max(self.worst, time.perf_counter() - self._asked)
                self._asked = 0.0
                await asyncio.sleep(0.02)

    def __enter__(self) -> StallProbe:
        self._asked = 0.0
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *_: object) -> None:
        if self._asked:  # a probe still waiting counts too: a gateway stalled to the end
            self.worst = max(self.worst, time.perf_counter() - self._asked)
        if self._task is not None:
            self._task.cancel()


@dataclass
class Streamed:
    status: int
    total: int  # bytes received
    tail: bytes  # the last 64 KB (and CLOSED when the gateway cut the connection)
    completed: bool  # a ``response.completed`` event went by


async def read_counting(gw: Gateway, ingress: str, model: str) -> Streamed:
    """Stream a request, keeping only the byte count, the tail and whether it completed."""
    body = body_for(ingress, model, True)
    marker = b"event: response.completed"
    async with gw.client.post(gw.url(INGRESS[ingress]), json=body, headers=gw.headers) as r:
        total, tail, completed = 0, b"", False
        try:
            async for piece in r.content.iter_chunked(1 << 16):
                total += len(piece)
                completed = completed or marker in tail[-len(marker) :] + piece
                tail = (tail + piece)[-(1 << 16) :]
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            tail += CLOSED
        return Streamed(r.status, total, tail, completed)


class Footprint:
    """The gateway's CPU, peak RSS and worst /health latency while a case runs.

    ``notes`` is filled on leaving, also when the case is cancelled at its timeout (a hung
    case's cost is the interesting part).
    """

    def __init__(self, gw: Gateway, notes: dict[str, Any]) -> None:
        self._gw = gw
        self._probe = StallProbe(gw)
        self.notes = notes

    def __enter__(self) -> Footprint:
        self._cpu = cpu_seconds(self._gw.pid)
        self.notes["rss_mb_before"] = round(memory_kb(self._gw.pid) / 1024, 1)
        self._probe.__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        self._probe.__exit__()
        self.notes["gateway_cpu_s"] = round(cpu_seconds(self._gw.pid) - self._cpu, 2)
        self.notes["worst_health_ms"] = round(self._probe.worst * 1000, 1)
        self.notes["rss_mb_after"] = round(memory_kb(self._gw.pid) / 1024, 1)
        self.notes["peak_rss_mb"] = round(memory_kb(self._gw.pid, "VmHWM") / 1024, 1)


async def huge(gw: Gateway, megabytes: int, ingresses: tuple[str, ...], limit: float) -> Category:
    """One SSE event of ``megabytes`` MB and no terminator, and a non-stream answer of that size
    (over the provider's ``max_body_bytes``): a clean error, not a stall or a relay."""
    category = Category("huge upstream event")

    def case(ingress: str) -> Case:
        async def check() -> tuple[bool, str]:
            notes: dict[str, Any] = category.notes.setdefault(ingress, {})
            with Footprint(gw, notes):
                got = await read_counting(gw, ingress, f"huge-{megabytes}")
            notes["bytes_to_client"] = got.total
            relayed = got.total > megabytes * 2**20 // 2
            ended = stream_error(got.tail) or got.tail.endswith(CLOSED)
            status = got.status
            clean = not relayed and (status in (502, 503, 504) or (status == 200 and ended))
            return clean, f"status {status}, {notes}"

        return Case(f"{megabytes} MB event {ingress}", check)

    async def whole() -> tuple[bool, str]:
        answer = await gw.ask("chat", f"bigjson-{megabytes}", False)
        relayed = len(answer.body) > megabytes * 2**20 // 2
        clean, detail = errored(answer)
        return clean and not relayed, f"{len(answer.body)} bytes to the client: {detail[:200]}"

    cases = [case(i) for i in ingresses]
    cases.append(Case(f"{megabytes} MB non-stream answer over max_body_bytes (4 MB)", whole))
    await run_cases(category, cases, limit, concurrency=1)
    return category


async def bulk(gw: Gateway, megabytes: int, limit: float) -> Category:
    """A ``megabytes`` MB stream through /v1/responses: bytes to the client and peak RSS.

    Clean when it completes and the gateway's peak RSS grew by at most twice the text plus
    48 MB (a gateway that streams holds a copy or two of the text, not one per final event).
    Bytes to the client are reported, not judged: Responses' final events repeat the text by
    design (output_text.done, content_part.done, output_item.done, completed).
    """
    category = Category("large responses stream")

    async def check() -> tuple[bool, str]:
        notes = category.notes
        notes["content_mb"] = megabytes
        with Footprint(gw, notes):
            got = await read_counting(gw, "responses", f"bulk-{megabytes}")
        notes["bytes_to_client_mb"] = round(got.total / 2**20, 1)
        notes["amplification"] = round(got.total / 2**20 / megabytes, 2)
        completed = got.status == 200 and got.completed
        bounded = notes["peak_rss_mb"] - notes["rss_mb_before"] <= 2 * megabytes + 48
        return completed and bounded, f"completed={completed} peak_growth_ok={bounded} {notes}"

    await run_cases(category, [Case(f"{megabytes} MB via /v1/responses", check)], limit)
    return category
