"""One benchmark cell: a wrk run against one stack, with the CPU it cost and who else was busy."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ttft, wrk
from bench.payloads import chat_body
from bench.procs import children_cpu_seconds, cpu_seconds, system_busy_seconds, wait_quiet
from bench.stacks import Stack

KINDS = ("json", "stream")
CONNECTIONS = (1, 64)
Cells = dict[str, dict[str, Any]]  # "json@64" -> numbers
NOISY = 0.1  # cores used by other processes above which a cell is suspect


@dataclass(frozen=True)
class Plan:
    seconds: float = 10
    warmup: float = 2
    connections: Sequence[int] = CONNECTIONS
    quiet_wait: float = 60  # max seconds to wait for other load to pass before each cell
    retries: int = 1  # reruns of a cell that other load disturbed; the quietest run is kept


def cell_key(kind: str, connections: int) -> str:
    return f"{kind}@{connections}"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_scripts(stack: Stack, work: Path) -> dict[str, Path]:
    return {
        kind: wrk.write_script(
            work / f"{stack.name}-{kind}.lua",
            chat_body(stack.model, kind == "stream"),
            stack.headers,
        )
        for kind in KINDS
    }


def run_cell(
    stack: Stack, upstream: Stack, script: Path, connections: int, seconds: float
) -> dict[str, Any]:
    """One wrk run, with the CPU the stack's process spent per request during it.

    Also how much CPU went to processes that are not part of the benchmark (other work on
    the machine): above ``NOISY`` cores the cell's numbers are suspect.
    """
    ours = {stack.proc.pid, upstream.proc.pid}
    before = {pid: cpu_seconds(pid) for pid in ours}
    busy_before, wrk_before = system_busy_seconds(), children_cpu_seconds()
    result = wrk.run(stack.chat_url, script, connections, seconds)
    spent = {pid: cpu_seconds(pid) - before[pid] for pid in ours}
    wrk_cpu = children_cpu_seconds() - wrk_before
    foreign = system_busy_seconds() - busy_before - wrk_cpu - sum(spent.values())
    cell = result.as_dict()
    cpu = spent[stack.proc.pid]
    elapsed = result.seconds or seconds
    cell["cpu_us_per_req"] = round(cpu / result.requests * 1e6, 1) if result.requests else None
    cell["cpu_cores_busy"] = round(cpu / elapsed, 2)
    cell["wrk_cores_busy"] = round(wrk_cpu / elapsed, 2)
    cell["other_cores_busy"] = round(max(0.0, foreign) / elapsed, 2)
    if result.errors:
        log(f"  {stack.name}: {result.errors} errors {result.error_detail}")
    return cell


def quiet_cell(
    stack: Stack, upstream: Stack, script: Path, connections: int, plan: Plan
) -> dict[str, Any]:
    """``run_cell`` after waiting for quiet, rerun when other processes disturbed it."""
    best: dict[str, Any] | None = None
    for attempt in range(plan.retries + 1):
        if plan.quiet_wait:
            wait_quiet(plan.quiet_wait, NOISY)
        time.sleep(0.5)
        cell = run_cell(stack, upstream, script, connections, plan.seconds)
        cell["attempt"] = attempt + 1
        if best is None or cell["other_cores_busy"] < best["other_cores_busy"]:
            best = cell
        if cell["other_cores_busy"] <= NOISY:
            break
        log(f"  other processes used {cell['other_cores_busy']} cores during that cell")
    assert best is not None
    return best


def run_stack(stack: Stack, upstream: Stack, work: Path, plan: Plan) -> Cells:
    """Check the stack answers correctly, warm it up, then every kind x connection count."""
    ttft.check(stack)
    scripts = write_scripts(stack, work)
    for kind in KINDS:  # fill connection pools and caches; not recorded
        wrk.run(stack.chat_url, scripts[kind], 64, plan.warmup)
    cells: Cells = {}
    for kind in KINDS:
        for connections in plan.connections:
            cell = quiet_cell(stack, upstream, scripts[kind], connections, plan)
            cells[cell_key(kind, connections)] = cell
            log(
                f"  {stack.name} {cell_key(kind, connections)}: {cell['rps']:,.0f} req/s, "
                f"p50 {cell['p50_ms']:.2f} ms, p99 {cell['p99_ms']:.2f} ms, "
                f"{cell['cpu_us_per_req']} µs CPU/req, other load {cell['other_cores_busy']}"
            )
    return cells
