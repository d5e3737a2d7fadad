"""The usage log on PostgreSQL vs on SQLite (issue 17): the proxy benchmark, both in one run.

    .venv/bin/python -m bench.usage_store [--seconds 4] [--rounds 6] [--together-rounds 4]

Two governed turnouts (``bench/governance.py``'s ``on`` mode: a virtual key on every request,
rate limits, prices, the usage log writing one row per request) from the working tree, in front
of one fake upstream, identical but for ``server.database``: a SQLite file, and a throwaway
PostgreSQL cluster on loopback (tests/postgres_server.py: Debian's ``postgresql`` package,
durability off as in the tests). Both stay up for the whole run; ``bench/pair.py`` loads them
alternating and side by side at c=64 with the ~2 KB chat request and the 20-chunk stream.

Target: PostgreSQL's throughput >= 0.90 of SQLite's (the alternating median, per kind). Also
checked: each database holds a usage row for every request its turnout answered (each process
is stopped with SIGTERM first, which flushes its writer).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from bench import governance
from bench.cells import write_scripts
from bench.pair import Pair, add_arguments, pair_lines, summary
from bench.procs import Processes, wait_ready
from bench.report import RESULTS, machine
from bench.runner import run_benchmark
from bench.stacks import Stack, start_upstream, working_tree_build
from tests.gateway_server import free_port

KINDS = ("json", "stream")
# A is the baseline: ratios are postgres / sqlite.
MODES = ("sqlite", "postgres")
TARGET = 0.90
_DATABASE = "@DATABASE@"


def config(upstream: Stack, database: str) -> str:
    """governance's governed config with ``database`` (a path or a PostgreSQL URL)."""
    text = governance.config(upstream, Path(_DATABASE), governed=True, headers="refusals")
    return text.replace(_DATABASE, database)


def new_key(database: str) -> str:
    from gateway.keys import connect, create_key

    connection = connect(database)
    try:
        secret, _ = create_key(connection, "bench", "bench-agent")
    finally:
        connection.close()
    return secret


def start(procs: Processes, upstream: Stack, work: Path, mode: str, database: str) -> Stack:
    path = work / f"{mode}.yaml"
    path.write_text(config(upstream, database))
    headers = {**upstream.headers, "Authorization": f"Bearer {new_key(database)}"}
    port = free_port()
    proc = procs.spawn(f"turnout-{mode}", working_tree_build().argv(path, port), cwd=work)
    origin = f"http://127.0.0.1:{port}"
    ready = wait_ready(proc, origin + "/health", timeout=30)
    return Stack(mode, origin + "/v1/chat/completions", "bench", proc, origin, headers, ready)


def usage_rows(database: str) -> int:
    if database.startswith("postgresql://"):
        from gateway import postgres

        connection = postgres.connect(database)
        try:
            return int(connection.execute("SELECT COUNT(*) FROM usage").fetchall()[0][0])
        finally:
            connection.close()
    with sqlite3.connect(database) as sqlite:
        return int(sqlite.execute("SELECT COUNT(*) FROM usage").fetchone()[0])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.postgres_server import PostgresServer

    alternating: dict[str, dict[str, Any]] = {}
    together: dict[str, dict[str, Any]] = {}
    rows: dict[str, int] = {}
    with PostgresServer() as cluster, Processes(RESULTS / "logs") as procs:
        databases = {"sqlite": str(work / "sqlite.db"), "postgres": cluster.new_database()}
        upstream = start_upstream(procs)
        stacks = {m: start(procs, upstream, work, m, databases[m]) for m in MODES}
        bench = Pair(MODES, stacks, {m: write_scripts(s, work) for m, s in stacks.items()})
        bench.warm(KINDS, seconds=min(2.0, args.seconds))
        for kind in KINDS:
            rounds = bench.alternating(kind, args.seconds, args.rounds)
            alternating[kind] = {"rounds": rounds, "median": summary(rounds)}
            if args.together_rounds:
                rounds = bench.side_by_side(kind, args.seconds, args.together_rounds)
                together[kind] = {"rounds": rounds, "median": summary(rounds)}
        for mode in MODES:
            procs.stop(stacks[mode].proc)
            rows[mode] = usage_rows(databases[mode])
    ratios = {kind: alternating[kind]["median"]["ratio"] for kind in KINDS}
    return {
        "machine": machine(),
        "settings": vars(args),
        "alternating": alternating,
        "side_by_side": together,
        "postgres_over_sqlite": ratios,
        "usage_log": {
            mode: {"answered": bench.answered[mode], "rows": rows[mode]} for mode in MODES
        },
        "targets": {
            f"postgres_at_least_{TARGET:.2f}_of_sqlite": all(r >= TARGET for r in ratios.values()),
            # Rows may exceed answers (requests wrk cut off still get a 499 row), never fall short.
            "a_usage_row_for_every_request": all(rows[m] >= bench.answered[m] for m in MODES),
        },
    }


def report(result: dict[str, Any]) -> str:
    lines = []
    for kind in KINDS:
        lines += pair_lines(MODES, kind, result, f" (target >= {TARGET})")
    for mode, usage in result["usage_log"].items():
        lines.append(f"usage log {mode}: {usage['rows']:,} rows for {usage['answered']:,} answers")
    lines.append("targets: " + json.dumps(result["targets"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, rounds=6, together=4)
    args = parser.parse_args()
    return run_benchmark("usage_store", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
