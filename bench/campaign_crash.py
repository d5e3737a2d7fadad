"""Usage rows across a crash: load a gateway, kill it, count answered requests without a row.

Rows are written by a batching background writer, so a SIGKILL loses what was not committed
yet: bounded by ``usage.flush_interval_seconds`` (plus the batch being committed). A SIGTERM
drains the writer and loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp

from bench.campaign_faults import body_for
from bench.campaign_http import Case, Category, run_cases
from bench.procs import Proc, Processes

# At most this much traffic may be lost to a SIGKILL (issue 11 measured ~0.8 s at a 0.5 s
# flush interval).
MAX_LOST_SECONDS = 0.5


async def _load(origin: str, seconds: float, answered: list[int]) -> None:
    """16 workers sending small chats until cancelled or ``seconds`` pass; counts answers."""
    deadline = time.monotonic() + seconds
    body = body_for("chat", "ok", False)

    async def worker(client: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            try:
                async with client.post(origin + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    if r.status == 200:
                        answered[0] += 1
            except (aiohttp.ClientError, OSError):
                return  # the gateway is gone

    async with aiohttp.ClientSession() as client:
        await asyncio.gather(*(worker(client) for _ in range(16)))


def _rows(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM usage").fetchone()
        return int(count)


def _case(
    procs: Processes, proc: Proc, origin: str, database: Path, sig: signal.Signals, seconds: float
) -> Case:
    async def check() -> tuple[bool, str]:
        answered = [0]
        load = asyncio.create_task(_load(origin, seconds + 5, answered))
        await asyncio.sleep(seconds)
        os.killpg(proc.pid, sig)
        await asyncio.to_thread(proc.popen.wait, 20)
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        await asyncio.to_thread(procs.stop, proc)
        rows = await asyncio.to_thread(_rows, database)
        lost = max(0, answered[0] - rows)
        rate = answered[0] / seconds
        lost_s = lost / rate if rate else 0.0
        clean = lost == 0 if sig == signal.SIGTERM else lost_s <= MAX_LOST_SECONDS
        return clean, f"{answered[0]} answered, {rows} rows, {lost} lost (~{lost_s:.2f} s)"

    return Case(f"{sig.name} after {seconds:.0f} s of load", check)


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
