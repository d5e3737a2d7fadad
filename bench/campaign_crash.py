"""Resource categories: usage rows across a crash, and tools that hold their threads.

Usage rows are written by a batching background writer, so a SIGKILL loses what was not
committed yet: bounded by ``usage.flush_interval_seconds`` (plus the batch being committed). A
SIGTERM drains the writer and loses nothing.

Plain python tools run on threads; one stuck past its ``timeout_seconds`` keeps its thread.
Issue 11 saw them starve the pool the control plane shares (``GET /v1/models`` took 14 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp

from bench.campaign_faults import Gateway, body_for
from bench.campaign_http import Case, Category, post_json, request, run_cases
from bench.procs import Proc, Processes

# At most this much traffic may be missing from the usage table while it runs, or be lost to a
# SIGKILL (issue 11 measured ~0.8 s at a 0.5 s flush interval, at ~415 req/s).
MAX_LOST_SECONDS = 0.35
RATE = 400  # requests per second: below the batch size per flush, so the interval decides


async def _load(origin: str, seconds: float, answered: list[int]) -> None:
    """8 workers sending small chats at ``RATE`` in all until ``seconds`` pass or the gateway
    goes away; counts answers."""
    started = time.monotonic()
    body = body_for("chat", "ok", False)
    interval = 8 / RATE

    async def worker(client: aiohttp.ClientSession, n: int) -> None:
        due = started + n * interval / 8
        while due < started + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            due += interval
            try:
                async with client.post(origin + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    if r.status == 200:
                        answered[0] += 1
            except (aiohttp.ClientError, OSError):
                return  # the gateway is gone

    async with aiohttp.ClientSession() as client:
        await asyncio.gather(*(worker(client, n) for n in range(8)))


def _rows(database: Path) -> int:
    with sqlite3.connect(database, timeout=5) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM usage").fetchone()
        return int(count)


def _case(
    procs: Processes, proc: Proc, origin: str, database: Path, sig: signal.Signals, seconds: float
) -> Case:
    """Load for ``seconds``, sampling answered requests minus rows every 50 ms (the writer's
    lag), then send ``sig``: SIGTERM must lose nothing, SIGKILL at most MAX_LOST_SECONDS."""

    async def check() -> tuple[bool, str]:
        answered = [0]
        started = time.monotonic()
        load = asyncio.create_task(_load(origin, seconds + 10, answered))
        worst = 0
        while time.monotonic() - started < seconds:
            await asyncio.sleep(0.05)
            seen = answered[0]
            worst = max(worst, seen - await asyncio.to_thread(_rows, database))
        os.killpg(proc.pid, sig)
        await asyncio.to_thread(proc.popen.wait, 20)
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        await asyncio.to_thread(procs.stop, proc)
        rate = answered[0] / (time.monotonic() - started) or 1.0
        rows = await asyncio.to_thread(_rows, database)
        lost = max(0, answered[0] - rows)
        lag_s, lost_s = worst / rate, lost / rate
        detail = (
            f"{answered[0]} answered (~{rate:.0f}/s), {rows} rows, {lost} lost (~{lost_s:.2f} s);"
            f" worst lag while running {worst} rows (~{lag_s:.2f} s)"
        )
        if sig == signal.SIGTERM:
            return lost == 0, detail
        return max(lag_s, lost_s) <= MAX_LOST_SECONDS, detail

    return Case(f"{sig.name} after {seconds:.0f} s at {RATE} req/s", check)


async def usage_after_kill(
    procs: Processes, victims: list[tuple[Proc, str, Path]], seconds: float
) -> Category:
    """``victims``: (process, origin, database) of two gateways: one SIGKILLed, one SIGTERMed."""
    category = Category("usage rows after kill")
    cases = [
        _case(procs, proc, origin, database, sig, seconds)
        for (proc, origin, database), sig in zip(
            victims, (signal.SIGKILL, signal.SIGTERM), strict=True
        )
    ]
    await run_cases(category, cases, seconds + 40, concurrency=1)
    category.notes["max_lost_seconds"] = MAX_LOST_SECONDS
    return category


BLOCKING_TOOL = {
    "id": "block",
    "executor": "python",
    "target": "bench.campaign_blocking:block",
    "timeout_seconds": 1,
}
STUCK_TOOLS = 16  # more than the default thread pool's workers on a small machine


async def blocking_tools(gw: Gateway, limit: float) -> Category:
    """16 calls of a tool that blocks 20 s (timeout 1 s), then the control plane must answer."""
    category = Category("blocking tools")
    call = {"tool": "block", "arguments": {"seconds": 20}}
    stuck = [
        asyncio.create_task(post_json(gw.client, gw.url("/v1/tools/call"), call))
        for _ in range(STUCK_TOOLS)
    ]
    await asyncio.sleep(1.5)  # past the tools' timeout: their threads are still held

    def timed_get(path: str) -> Case:
        async def check() -> tuple[bool, str]:
            started = time.monotonic()
            answer = await request(gw.client, "GET", gw.url(path))
            took = time.monotonic() - started
            return answer.status == 200 and took < 2.0, f"{answer.status} in {took:.2f} s"

        return Case(f"GET {path} with {STUCK_TOOLS} tools stuck", check)

    def tool_answer() -> Case:
        async def check() -> tuple[bool, str]:
            answers = await asyncio.gather(*stuck)
            refused = sum(1 for a in answers if b'"ok":false' in a.body.replace(b" ", b""))
            return refused == len(answers), f"{refused} of {len(answers)} ended as tool errors"

        return Case("stuck calls answered with a tool error", check)

    cases = [timed_get("/v1/models"), timed_get("/engine/status"), timed_get("/v1/usage?limit=1")]
    await run_cases(category, [*cases, tool_answer()], limit)
    return category
