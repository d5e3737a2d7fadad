"""CPU instructions per request of a turnout process, counted by valgrind's callgrind.

Wall-clock numbers on a shared two-core machine drift by tens of percent from one minute to
the next; an instruction count does not. callgrind runs the server (about fifty times slower,
which does not change what it executes), counting only while ``callgrind_control`` has
instrumentation on: from after a warm-up to after ``requests`` answers sent by a small
aiohttp client at ``concurrency``. Counted separately per thread, so the event-loop thread
(the one that limits a turnout process) is told apart from helpers such as the usage log's
SQLite thread.

Instruction counts leave out the kernel (socket calls) and how fast instructions retire, so
they rank code paths rather than predict req/s; for the Python code that governance adds on
the event loop, the ratio of counts has matched the measured CPU-time ratio (bench/README.md).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.procs import Processes, wait_ready


@dataclass(frozen=True, slots=True)
class Count:
    requests: int
    main_thread: float  # instructions per request on the event-loop thread
    process: float  # all threads

    def as_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "main_thread": self.main_thread, "process": self.process}


def require_valgrind() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind not found: apt-get update && apt-get install -y valgrind")


async def _load(
    url: str, headers: Mapping[str, str], body: bytes, requests: int, concurrency: int
) -> None:
    left = requests

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def _totals(out: Path) -> tuple[int, int]:
    """(event-loop thread, all threads) instructions over the dumps callgrind wrote."""
    main = every = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                count = int(line.split()[1])
                every += count
                # --separate-threads: one file per thread, "-01" the first (the main thread).
                if dump.name.endswith("-01"):
                    main += count
    return main, every


def count(
    procs: Processes,
    name: str,
    argv: Sequence[str],
    origin: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    requests: int = 2000,
    concurrency: int = 8,
    cwd: Path,
    settled: Callable[[], bool] = lambda: True,
) -> Count:
    """Start ``argv`` under callgrind, warm it up, count ``requests`` chat requests, stop it.

    Counting goes on until ``settled()`` (polled from outside the server) is true, so that
    work the requests left behind, such as a batch of usage rows, is counted with them.
    """
    out = cwd / f"callgrind-{name}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        *argv,
    ]
    proc = procs.spawn(f"callgrind-{name}", command, cwd=cwd)
    wait_ready(proc, origin + "/health", timeout=300)
    url = origin + "/v1/chat/completions"
    asyncio.run(_load(url, headers, body, 200, concurrency))
    control = ["callgrind_control"]
    subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
    asyncio.run(_load(url, headers, body, requests, concurrency))
    deadline = time.monotonic() + 300
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.5)
    subprocess.run([*control, "-i", "off", str(proc.pid)], check=True, capture_output=True)
    procs.stop(proc, timeout=120)
    time.sleep(0.5)
    main, every = _totals(out)
    return Count(requests, round(main / requests), round(every / requests))


def ratio(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """a/b of two callgrind counts: instructions per request on the event loop and in all."""
    return {part: round(a[part] / b[part], 3) for part in ("main_thread", "process")}


def report_line(modes: tuple[str, str], kind: str, count: dict[str, dict[str, float]]) -> str:
    """The report's line for one kind's counts of two modes and their ``{a}_over_{b}`` ratio."""
    a, b = modes
    first, second, over = count[a], count[b], count[f"{a}_over_{b}"]
    return (
        f"{kind} instructions/request (callgrind): event loop {first['main_thread']:,.0f} {a}, "
        f"{second['main_thread']:,.0f} {b}, {a}/{b} {over['main_thread']:.3f}; whole process "
        f"{first['process']:,.0f} {a}, {second['process']:,.0f} {b}, {a}/{b} "
        f"{over['process']:.3f}"
    )
