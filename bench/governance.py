"""What governance costs (issue 5): turnout with keys, limits, usage log and metrics on vs off.

One run, one fake upstream, two turnout processes started alternately from the same code:

- ``off``: embedded mode (no keys), no limits, usage log disabled; metrics are always on;
- ``on``: a virtual key on every request (hashed lookup), rate limits per key, per agent and
  per model (high enough that nothing is refused, so every scope is checked and settled),
  the usage log writing one row per request, prices for cost estimates.

wrk loads each at c=64 with the same ~2 KB chat request and the 20-chunk stream; the pairs
run ``--rounds`` times in alternation (off, on, off, on...) so machine noise hits both.
Reported: req/s per cell (median over rounds), the on/off ratio (target: within 10%), and
``on`` against the 2,000 req/s floor.

    .venv/bin/python -m bench.governance [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import wrk
from bench.cells import NOISY, Plan, log, quiet_cell, write_scripts
from bench.procs import Processes, exit_on_sigterm, wait_quiet
from bench.report import RESULTS, machine, write_results
from bench.stacks import UPSTREAM_MODEL, Stack, start_upstream, wait_ready, working_tree_build
from tests.gateway_server import free_port

KINDS = ("json", "stream")


def config(upstream: Stack, database: Path, governed: bool) -> str:
    common = f"""\
server:
  log_level: warning
  database: {database}
routing:
  retries: 0
providers:
  fake: {{kind: openai, base_url: "{upstream.origin}/v1", local: true}}
models:
  - name: bench
    targets:
      - {{provider: fake, model: {UPSTREAM_MODEL}}}
"""
    if not governed:
        return common + "usage: {enabled: false}\n"
    return (
        common
        + """\
usage: {enabled: true}
limits:
  backend: memory
  default_key: {rpm: 10000000, tpm: 1000000000, concurrent: 100000}
  agents: {"*": {rpm: 10000000, tpm: 1000000000}}
  models: {bench: {rpm: 10000000, concurrent: 100000}}
prices:
  bench: {input: 0.15, output: 0.60}
"""
    )


def create_key(database: Path) -> str:
    from gateway.keys import connect
    from gateway.keys import create_key as create

    connection = connect(str(database))
    try:
        secret, _ = create(connection, "bench", "bench-agent")
    finally:
        connection.close()
    return secret


def start(procs: Processes, upstream: Stack, work: Path, governed: bool) -> tuple[Stack, Path]:
    name = "on" if governed else "off"
    database = work / f"{name}.db"
    headers = dict(upstream.headers)
    if governed:
        headers["Authorization"] = f"Bearer {create_key(database)}"
    path = work / f"{name}.yaml"
    path.write_text(config(upstream, database, governed))
    port = free_port()
    proc = procs.spawn(f"turnout-{name}", working_tree_build().argv(path, port), cwd=work)
    origin = f"http://127.0.0.1:{port}"
    ready = wait_ready(proc, origin + "/health", timeout=30)
    stack = Stack(name, origin + "/v1/chat/completions", "bench", proc, origin, headers, ready)
    return stack, database


def usage_rows(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM usage").fetchone()[0])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    plan = Plan(seconds=args.seconds, warmup=2, connections=(64,), quiet_wait=60, retries=1)
    cells: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    rows = 0
    with Processes(RESULTS / "logs") as procs:
        upstream = start_upstream(procs)
        for round_number in range(args.rounds):
            for governed in (False, True):
                stack, database = start(procs, upstream, work, governed)
                scripts = write_scripts(stack, work)
                for kind in KINDS:
                    wrk.run(stack.chat_url, scripts[kind], 64, plan.warmup)
                for kind in KINDS:
                    wait_quiet(plan.quiet_wait, NOISY)
                    cell = quiet_cell(stack, upstream, scripts[kind], 64, plan)
                    cells[stack.name].setdefault(kind, []).append(cell["rps"])
                    log(
                        f"round {round_number + 1} {stack.name} {kind}@64: {cell['rps']:,.0f} req/s "
                        f"(other load {cell['other_cores_busy']}, errors {cell['errors']})"
                    )
                procs.stop(stack.proc)
                if governed:
                    rows += usage_rows(database)
    medians = {
        name: {kind: statistics.median(v) for kind, v in kinds.items()}
        for name, kinds in cells.items()
    }
    ratios = {kind: round(medians["on"][kind] / medians["off"][kind], 3) for kind in KINDS}
    return {
        "machine": machine(),
        "settings": vars(args),
        "rps": cells,
        "median_rps": medians,
        "on_over_off": ratios,
        "usage_rows_written_by_on": rows,
        "targets": {
            "within_10_percent": all(r >= 0.9 for r in ratios.values()),
            "on_json_at_64_at_least_2000": medians["on"]["json"] >= 2000,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    exit_on_sigterm()
    wrk.require_wrk()
    with tempfile.TemporaryDirectory(prefix="turnout-governance-") as tmp:
        result = run(args, Path(tmp))
    path = write_results("governance", result)
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("median_rps", "on_over_off", "usage_rows_written_by_on", "targets")
            },
            indent=2,
        )
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
