"""What governance costs (issue 5): turnout with keys, limits, usage log and metrics on vs off.

Two turnout processes from the same code in front of one fake upstream, both kept running:

- ``off``: embedded mode (no keys), no limits, usage log disabled; metrics are always on;
- ``on``: a virtual key on every request (hashed lookup), rate limits per key, per agent and
  per model (high enough that nothing is refused, so every scope is checked and settled), the
  usage log writing one row per request, prices for cost estimates. ``--headers always`` also
  puts OpenAI's x-ratelimit-* headers on every answer (routing.yaml ``limits.headers``).

Each kind (the ~2 KB chat request, the 20-chunk stream) is measured at c=64 two ways:

alternating  wrk loads one server at a time for ``--seconds``, off and on in turn (the order
             flips every round) for ``--rounds`` rounds. This is the issue's measure, throughput
             with governance on over off; the per-round ratio's median is reported, since this
             machine's speed drifts by tens of percent from one minute to the next.
side by side both servers loaded at once, each by its own wrk, for ``--together-rounds``
             rounds: whatever the machine does then, it does to both. Reported per round:
             the throughput ratio, and CPU per request of each server's event-loop thread
             (the one that limits a turnout process; the usage log's SQLite work runs on a
             thread of its own) and of the whole process. Their medians are the steadier
             estimate of what governance costs.

instructions both servers again under valgrind's callgrind (``bench/instructions.py``), each
             sent ``--instructions`` requests: CPU instructions per request on the event-loop
             thread and in the whole process. Deterministic where the two above are not.

Also checked: the ``on`` server's usage log holds a row for every request it answered (the
process is stopped with SIGTERM first, which flushes it).

    .venv/bin/python -m bench.governance [--seconds 4] [--rounds 10] [--headers always]
                                         [--instructions 2000 | --instructions 0]
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import instructions as callgrind
from bench.cells import log, write_scripts
from bench.pair import Pair, add_arguments, pair_lines, summary
from bench.payloads import chat_body
from bench.procs import Processes, wait_ready
from bench.report import RESULTS, machine
from bench.runner import run_benchmark
from bench.stacks import UPSTREAM_MODEL, Stack, start_upstream, working_tree_build
from tests.gateway_server import free_port

KINDS = ("json", "stream")
MODES = ("off", "on")


def config(
    upstream: Stack, database: Path, governed: bool, headers: str, flush_seconds: float = 0.5
) -> str:
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
        + f"""\
usage: {{enabled: true, flush_interval_seconds: {flush_seconds}}}
limits:
  backend: memory
  default_key: {{rpm: 10000000, tpm: 1000000000, concurrent: 100000}}
  agents: {{"*": {{rpm: 10000000, tpm: 1000000000}}}}
  models: {{bench: {{rpm: 10000000, concurrent: 100000}}}}
  headers: {headers}
prices:
  bench: {{input: 0.15, output: 0.60}}
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


def create_key_with(prefix: tuple[str, ...], cwd: Path | None, database: Path) -> str:
    """A key made by the build under test (``prefix``: its command up to ``serve``), so the
    database carries that build's own schema: an older build refuses a newer database."""
    config = database.with_suffix(".keys.yaml")
    config.write_text(f"server:\n  database: {database}\n")
    command = [*prefix[:-1], "keys", "--config", str(config), "--json", "create"]
    done = subprocess.run(
        [*command, "--name", "bench", "--agent", "bench-agent"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    secret: str = json.loads(done.stdout)["key"]
    return secret


def prepare(
    work: Path, upstream: Stack, governed: bool, headers: str
) -> tuple[str, Path, dict[str, str]]:
    """The mode's name, its database and the request headers (a virtual key when governed)."""
    name = "on" if governed else "off"
    database = work / f"{name}.db"
    request_headers = dict(upstream.headers)
    if governed:
        request_headers["Authorization"] = f"Bearer {create_key(database)}"
    return name, database, request_headers


def start(
    procs: Processes, upstream: Stack, work: Path, governed: bool, headers: str
) -> tuple[Stack, Path]:
    name, database, request_headers = prepare(work, upstream, governed, headers)
    path = work / f"{name}.yaml"
    path.write_text(config(upstream, database, governed, headers))
    port = free_port()
    proc = procs.spawn(f"turnout-{name}", working_tree_build().argv(path, port), cwd=work)
    origin = f"http://127.0.0.1:{port}"
    ready = wait_ready(proc, origin + "/health", timeout=30)
    stack = Stack(
        name, origin + "/v1/chat/completions", "bench", proc, origin, request_headers, ready
    )
    return stack, database


def instructions(
    procs: Processes, upstream: Stack, work: Path, args: argparse.Namespace
) -> dict[str, dict[str, dict[str, float]]]:
    """Instructions per request of both modes, for each kind; fresh databases.

    Under callgrind a server answers ~50 requests a second, so the usage log's flush interval
    is raised to keep its batches as large as at full speed (per-batch work stays amortised):
    the batch of 2,000 rows (``usage.batch_size``) that the counted requests fill is written
    while counting goes on, and counted with them.
    """
    counts: dict[str, dict[str, dict[str, float]]] = {}
    for kind in KINDS:
        for governed in (False, True):
            where = work / f"count-{kind}"
            where.mkdir(exist_ok=True)
            name, database, request_headers = prepare(where, upstream, governed, args.headers)
            path = where / f"{name}.yaml"
            path.write_text(config(upstream, database, governed, args.headers, flush_seconds=30))
            port = free_port()
            log(f"instructions: {name} {kind}, {args.instructions} requests under callgrind")
            counted = callgrind.count(
                procs,
                f"{name}-{kind}",
                working_tree_build().argv(path, port),
                f"http://127.0.0.1:{port}",
                request_headers,
                chat_body("bench", kind == "stream"),
                requests=args.instructions,
                cwd=where,
                settled=functools.partial(
                    rows_at_least, database, args.instructions if governed else 0
                ),
            )
            counts.setdefault(kind, {})[name] = counted.as_dict()
        counts[kind]["off_over_on"] = callgrind.ratio(counts[kind]["off"], counts[kind]["on"])
    return counts


def rows_at_least(database: Path, count: int) -> bool:
    if count <= 0:
        return True
    try:
        return usage_rows(database) >= count
    except sqlite3.Error:
        return False


def usage_rows(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT COUNT(*) FROM usage").fetchone()[0])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    alternating: dict[str, dict[str, Any]] = {}
    together: dict[str, dict[str, Any]] = {}
    with Processes(RESULTS / "logs") as procs:
        upstream = start_upstream(procs)
        stacks, databases = {}, {}
        for mode in MODES:
            stacks[mode], databases[mode] = start(procs, upstream, work, mode == "on", args.headers)
        bench = Pair(MODES, stacks, {m: write_scripts(s, work) for m, s in stacks.items()})
        bench.warm(KINDS)
        for kind in KINDS:
            rounds = bench.alternating(kind, args.seconds, args.rounds)
            alternating[kind] = {"rounds": rounds, "median": summary(rounds)}
            rounds = bench.side_by_side(kind, args.seconds, args.together_rounds)
            together[kind] = {"rounds": rounds, "median": summary(rounds)}
        procs.stop(stacks["on"].proc)
        rows = usage_rows(databases["on"])
        procs.stop(stacks["off"].proc)
        counts = instructions(procs, upstream, work, args) if args.instructions else {}
    ratios = {kind: alternating[kind]["median"]["ratio"] for kind in KINDS}
    return {
        "machine": machine(),
        "settings": vars(args),
        "alternating": alternating,
        "side_by_side": together,
        "instructions_per_request": counts,
        "on_over_off": ratios,
        "usage_log": {"requests_answered_by_on": bench.answered["on"], "rows": rows},
        "targets": {
            "within_10_percent": all(r >= 0.9 for r in ratios.values()),
            "on_json_at_64_at_least_2000": alternating["json"]["median"]["on"] >= 2000,
            # wrk counts answers it read in full; requests it cut off at the end of a run
            # still get their row (status 499), so rows may exceed answers, never fall short.
            "a_usage_row_for_every_request": rows >= bench.answered["on"],
        },
    }


def report(result: dict[str, Any]) -> str:
    lines = []
    for kind in KINDS:
        lines += pair_lines(MODES, kind, result)
    for kind, count in result["instructions_per_request"].items():
        lines.append(callgrind.report_line(MODES, kind, count))
    usage = result["usage_log"]
    lines.append(
        f"usage log: {usage['rows']:,} rows for {usage['requests_answered_by_on']:,} answers"
    )
    lines.append("targets: " + json.dumps(result["targets"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, rounds=10, together=6)
    parser.add_argument("--headers", choices=("refusals", "always"), default="refusals")
    parser.add_argument(
        "--instructions",
        type=int,
        default=2000,
        help="requests counted under callgrind (at least usage.batch_size, 2000); 0: skip",
    )
    args = parser.parse_args()
    name = "governance" if args.headers == "refusals" else "governance-headers"
    return run_benchmark(name, args, run, report, valgrind=bool(args.instructions))


if __name__ == "__main__":
    sys.exit(main())
