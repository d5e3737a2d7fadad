"""Time to first token, and a one-request sanity check of each stack, with an aiohttp client.

TTFT here is the time from sending the request to receiving the first SSE ``data:`` event,
measured sequentially on one keep-alive connection. The client's own cost is the same for
every stack, so the difference between two stacks is what the proxy adds.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import asdict, dataclass

import aiohttp

from bench.payloads import chat_body
from bench.stacks import Stack


@dataclass(frozen=True, slots=True)
class TTFT:
    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


async def _one_ttft(session: aiohttp.ClientSession, stack: Stack, body: bytes) -> float:
    started = time.perf_counter()
    async with session.post(stack.chat_url, data=body, headers=stack.headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{stack.name}: HTTP {response.status}: {await response.text()}")
        seen = b""
        first = 0.0
        while True:
            chunk = await response.content.readany()
            if not chunk:
                break
            if not first:
                seen += chunk
                if b"data:" in seen:
                    first = time.perf_counter() - started
    if not first:
        raise RuntimeError(f"{stack.name}: stream had no data event")
    return first


async def _measure(stack: Stack, n: int, warmup: int) -> list[float]:
    body = chat_body(stack.model, stream=True)
    connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        for _ in range(warmup):
            await _one_ttft(session, stack, body)
        return [await _one_ttft(session, stack, body) for _ in range(n)]


def measure(stack: Stack, n: int = 300, warmup: int = 30) -> TTFT:
    times = [t * 1000 for t in asyncio.run(_measure(stack, n, warmup))]
    return TTFT(
        n=n,
        p50_ms=round(statistics.median(times), 3),
        p99_ms=round(percentile(times, 99), 3),
        mean_ms=round(statistics.fmean(times), 3),
        min_ms=round(min(times), 3),
    )


async def _check(stack: Stack) -> list[str]:
    problems = []
    async with aiohttp.ClientSession() as session:
        async with session.post(
            stack.chat_url, data=chat_body(stack.model, False), headers=stack.headers
        ) as response:
            text = await response.read()
            if response.status != 200 or b'"echo: ' not in text:
                problems.append(f"non-stream: HTTP {response.status}: {text[:300]!r}")
        async with session.post(
            stack.chat_url, data=chat_body(stack.model, True), headers=stack.headers
        ) as response:
            text = await response.read()
            events = text.count(b"data:")
            if response.status != 200 or not text.rstrip().endswith(b"data: [DONE]") or events < 22:
                problems.append(f"stream: HTTP {response.status}, {events} events: {text[-300:]!r}")
    return problems


def check(stack: Stack) -> None:
    """One request of each kind; raises if the stack does not answer like OpenAI would."""
    problems = asyncio.run(_check(stack))
    if problems:
        raise RuntimeError(f"{stack.name} answers wrongly: " + "; ".join(problems))
