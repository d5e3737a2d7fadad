"""turnout vs the upstream directly, vs the minimal proxy (vs LiteLLM), side by side, in one run.

    .venv/bin/python -m bench.proxy [--litellm] [--seconds 10] [--quick] [--ref HEAD]
                                    [--ungoverned]

Every server runs in its own process: the fast fake upstream, the minimal raw-ASGI + aiohttp
proxy (``bench/mini_proxy.py --variant asgi-aiohttp``, the Python limit on this machine),
turnout, and optionally the LiteLLM proxy (one worker). turnout runs governed, as issue 13's
targets are stated: a virtual key on every request, rate limits per key, agent and model (high
enough that nothing is refused), the usage log and metrics on (``bench/governance.py``'s
``on`` mode); ``--ungoverned`` runs the shipped defaults instead (no keys, no limits).

wrk, in its own process with one thread, loads each stack with a ~2 KB non-streaming chat
request and with a 20-chunk stream, at 1 and 64 connections. Then: time to first token through
a small aiohttp client, turnout's RSS after >=100k requests on a fresh process, and ``turnout
serve`` time to ready with the memory and tools plugins enabled (``--ready-plugins``).
Throughput targets are ratios to the minimal proxy's in the same run (absolute numbers drift by
tens of percent on a shared machine); added latency and time to first token are turnout's minus
the upstream's own. Results: tables and the targets with PASS/MISS on stdout, JSON in
bench/results/.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import governance, ttft, wrk
from bench.cells import NOISY, Plan, log, run_stack, write_scripts
from bench.procs import (
    Processes,
    cpu_seconds,
    exit_on_sigterm,
    foreign_load,
    memory_kb,
    wait_quiet,
)
from bench.proxy_report import MINI, derive, render, targets
from bench.report import RESULTS, machine, write_results
from bench.stacks import (
    Stack,
    TurnoutBuild,
    litellm_python,
    ref_build,
    start_litellm,
    start_mini_proxy,
    start_turnout,
    start_upstream,
    turnout_ready_seconds,
    working_tree_build,
)


def scrape_turnout(stack: Stack) -> dict[str, float]:
    """Request count and the gateway's own overhead estimate, from its /metrics."""
    with urllib.request.urlopen(stack.origin + "/metrics", timeout=5) as response:
        text = response.read().decode()
    totals = {"requests": 0.0, "overhead_sum": 0.0, "overhead_count": 0.0}
    prefixes = {
        "turnout_requests_total{": "requests",
        "turnout_gateway_overhead_seconds_sum{": "overhead_sum",
        "turnout_gateway_overhead_seconds_count{": "overhead_count",
    }
    for line in text.splitlines():
        for prefix, key in prefixes.items():
            if line.startswith(prefix):
                totals[key] += float(line.rsplit(" ", 1)[1])
    count = totals["overhead_count"]
    totals["overhead_mean_ms"] = round(totals["overhead_sum"] / count * 1000, 4) if count else 0.0
    return totals


def start_measured_turnout(
    procs: Processes,
    build: TurnoutBuild,
    upstream: Stack,
    work: Path,
    args: argparse.Namespace,
    name: str = "turnout",
) -> Stack:
    """turnout governed (a virtual key, limits, usage log; see the module doc) or as shipped."""
    if args.ungoverned:
        return start_turnout(procs, build, upstream, work, name=name)
    database = work / f"{name}.db"
    headers = dict(upstream.headers)
    headers["Authorization"] = (
        f"Bearer {governance.create_key_with(build.prefix, build.cwd, database)}"
    )
    config = work / f"{name}.yaml"
    config.write_text(governance.config(upstream, database, governed=True, headers="refusals"))
    return start_turnout(procs, build, upstream, work, name=name, config=config, headers=headers)


def rss_run(
    procs: Processes,
    build: TurnoutBuild,
    upstream: Stack,
    work: Path,
    args: argparse.Namespace,
    rps_hint: float,
) -> dict[str, Any]:
    """A fresh turnout, loaded with non-streaming requests at c=64 until >= ``rss_requests``."""
    stack = start_measured_turnout(procs, build, upstream, work, args, name="turnout-rss")
    script = write_scripts(stack, work)["json"]
    rss_ready = memory_kb(stack.proc.pid)
    served, runs = 0, 0
    while served < args.rss_requests and runs < 3:
        missing = args.rss_requests - served
        seconds = min(args.rss_max_seconds, math.ceil(missing * 1.1 / max(rps_hint, 100)) + 2)
        result = wrk.run(stack.chat_url, script, 64, seconds)
        served += result.requests
        rps_hint = result.rps or rps_hint
        runs += 1
    out = {
        "requests": served,
        "wrk_runs": runs,
        "rss_ready_mb": round(rss_ready / 1024, 1),
        "rss_mb": round(memory_kb(stack.proc.pid) / 1024, 1),
        "hwm_mb": round(memory_kb(stack.proc.pid, "VmHWM") / 1024, 1),
        "metrics": scrape_turnout(stack),
    }
    procs.stop(stack.proc)
    return out


def ready_times(
    build: TurnoutBuild, upstream: Stack, work: Path, runs: int, plugins: list[str]
) -> dict[str, Any]:
    times = turnout_ready_seconds(build, upstream, work, runs, plugins)
    return {
        "plugins": plugins,
        "runs_s": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
    }


def bench_stack(
    procs: Processes,
    stack: Stack,
    upstream: Stack,
    work: Path,
    args: argparse.Namespace,
    results: dict[str, Any],
) -> None:
    """Every wrk cell, then TTFT, then memory, for one running stack."""
    log(f"{stack.name}: ready in {stack.ready_seconds:.2f} s; load with wrk")
    results["cells"][stack.name] = run_stack(stack, upstream, work, plan_of(args))
    log(f"{stack.name}: TTFT, {args.ttft_n} sequential streams")
    wait_quiet(args.quiet_wait, NOISY)
    results["ttft"][stack.name] = ttft.measure(stack, args.ttft_n).as_dict()
    info: dict[str, Any] = {
        "ready_s": round(stack.ready_seconds, 2),
        "rss_mb_after_bench": round(memory_kb(stack.proc.pid) / 1024, 1),
        "hwm_mb": round(memory_kb(stack.proc.pid, "VmHWM") / 1024, 1),
    }
    if stack.name == "turnout":
        info["metrics"] = scrape_turnout(stack)
    results["stacks"][stack.name] = info
    if stack is not upstream:
        procs.stop(stack.proc)


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    build = ref_build(args.ref, work) if args.ref else working_tree_build()
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": vars(args),
        "turnout_build": build.label,
        "cells": {},
        "ttft": {},
        "stacks": {},
    }
    with Processes(RESULTS / "logs") as procs:
        upstream = start_upstream(procs, chunks=args.chunks)
        log(f"fake upstream at {upstream.origin}; turnout from the {build.label}")
        if args.ready_runs:
            plugins = [p for p in args.ready_plugins.split(",") if p]
            log(f"turnout serve time to ready, {args.ready_runs} runs, plugins {plugins}")
            wait_quiet(args.quiet_wait, NOISY)
            results["ready"] = ready_times(build, upstream, work, args.ready_runs, plugins)
        starts: list[Callable[[], Stack]] = [
            lambda: upstream,
            lambda: start_mini_proxy(procs, MINI, upstream),
            lambda: start_measured_turnout(procs, build, upstream, work, args),
        ]
        if args.litellm:
            python = litellm_python()
            starts.append(lambda: start_litellm(procs, upstream, work, python))
        for start in starts:
            bench_stack(procs, start(), upstream, work, args, results)
        if args.rss_requests:
            log(f"turnout RSS after {args.rss_requests:,} requests (fresh process)")
            hint = results["cells"]["turnout"]["json@64"]["rps"]
            results["rss"] = rss_run(procs, build, upstream, work, args, hint)
        results["upstream_cpu_s"] = cpu_seconds(upstream.proc.pid)
    results["derived"] = derive(results["cells"], results["ttft"])
    results["targets"] = [t.as_dict() for t in targets(results)]
    return results


def plan_of(args: argparse.Namespace) -> Plan:
    return Plan(
        seconds=args.seconds, warmup=args.warmup, quiet_wait=args.quiet_wait, retries=args.retries
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n")[0])
    p.add_argument("--litellm", action="store_true", help="also benchmark the LiteLLM proxy")
    p.add_argument(
        "--ungoverned",
        action="store_true",
        help="turnout with the shipped defaults (no keys, no limits) instead of governed",
    )
    p.add_argument("--ref", help="benchmark turnout at this git ref instead of the working tree")
    p.add_argument("--seconds", type=float, default=10, help="wrk duration per cell")
    p.add_argument("--warmup", type=float, default=2, help="unrecorded wrk seconds per kind")
    p.add_argument("--ttft-n", type=int, default=300)
    p.add_argument("--rss-requests", type=int, default=100_000)
    p.add_argument("--rss-max-seconds", type=float, default=240)
    p.add_argument("--ready-runs", type=int, default=5)
    p.add_argument(
        "--ready-plugins",
        default="memory,tools",
        help="plugins enabled while timing `turnout serve` to ready (issue 13: memory and tools)",
    )
    p.add_argument("--chunks", type=int, default=20, help="content chunks per streamed reply")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="max seconds to wait for other processes to go idle before each cell (0: don't)",
    )
    p.add_argument("--retries", type=int, default=1, help="reruns of a disturbed cell")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 s cells, 50 TTFT samples, 10k-request RSS run, 2 ready runs",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.ttft_n = 3, 1, 50
        args.rss_requests, args.ready_runs, args.quiet_wait, args.retries = 10_000, 2, 5, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    wrk.require_wrk()
    load = foreign_load()
    if load > NOISY:
        log(f"warning: other processes use {load:.2f} cores; numbers will be noisy")
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        results = run_all(args, Path(tmp))
    path = write_results("proxy", results)
    print(render(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
