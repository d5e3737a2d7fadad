"""Why aiohttp is the data-plane client: the same minimal proxy with httpx vs aiohttp.

    .venv/bin/python -m bench.http_clients [--seconds 10] [--variants ...]

Reproduces the client comparison in shared/reference/perf.md: a minimal Litestar proxy
(bench/mini_proxy.py) forwarding to the fake upstream with one shared ``httpx.AsyncClient``,
then with one shared ``aiohttp.ClientSession``, then raw ASGI + aiohttp as the floor. wrk at
64 connections, non-streaming and 20-chunk stream; reports req/s, latency and the proxy's CPU
per request. Results: a table on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.cells import KINDS, Cells, Plan, cell_key, log, run_stack
from bench.procs import Processes, exit_on_sigterm
from bench.report import RESULTS, machine, ratio, table, write_results
from bench.stacks import start_mini_proxy, start_upstream

VARIANTS = ("litestar-httpx", "litestar-aiohttp", "asgi-aiohttp")
BASELINE = "litestar-aiohttp"


def rows(cells: dict[str, Cells], connections: int) -> list[list[object]]:
    out: list[list[object]] = []
    for kind in KINDS:
        key = cell_key(kind, connections)
        base = cells.get(BASELINE, {}).get(key, {})
        for name, by_cell in cells.items():
            cell = by_cell[key]
            out.append(
                [
                    name,
                    kind,
                    cell["rps"],
                    cell["p50_ms"],
                    cell["p99_ms"],
                    cell["cpu_us_per_req"],
                    cell["errors"],
                    cell["other_cores_busy"],
                    ratio(cell["rps"], base.get("rps")),
                    ratio(cell["cpu_us_per_req"], base.get("cpu_us_per_req")),
                ]
            )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.http_clients", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seconds", type=float, default=10, help="wrk duration per cell")
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--quiet-wait", type=float, default=60, help="see bench.proxy --help")
    p.add_argument("--retries", type=int, default=1, help="reruns of a disturbed cell")
    p.add_argument("--no-direct", action="store_true", help="skip the direct-to-upstream row")
    return p.parse_args(argv)


def plan_of(args: argparse.Namespace) -> Plan:
    return Plan(
        seconds=args.seconds,
        warmup=args.warmup,
        connections=(args.connections,),
        quiet_wait=args.quiet_wait,
        retries=args.retries,
    )


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args), "cells": {}}
    with Processes(RESULTS / "logs") as procs:
        upstream = start_upstream(procs)
        if not args.no_direct:
            log("direct to the upstream")
            results["cells"]["direct"] = run_stack(upstream, upstream, work, plan_of(args))
        for variant in args.variants:
            stack = start_mini_proxy(procs, variant, upstream)
            log(f"{variant}: load with wrk")
            results["cells"][variant] = run_stack(stack, upstream, work, plan_of(args))
            procs.stop(stack.proc)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        results = run_all(args, Path(tmp))
    path = write_results("http_clients", results)
    headers = [
        "stack",
        "kind",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU µs/req",
        "errors",
        "other load",
        f"req/s / {BASELINE}",
        f"CPU / {BASELINE}",
    ]
    print(f"wrk, {args.connections} connections, {args.seconds:g} s per cell")
    print(table(headers, rows(results["cells"], args.connections)))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
