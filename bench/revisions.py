"""What a change costs on the hot path: turnout at a git ref (before) vs the working tree (after).

Both run the same plain config (``bench.stacks.turnout_config``: one model, one fake upstream,
metrics on, nothing else) and stay up for the whole run; see ``bench/pair.py`` for the
alternating and side-by-side measures, reported as after/before (throughput) and
before/after (CPU per request: below 1, the change costs more). Then, with
``--instructions N``, each build under callgrind: instructions per request on the event-loop
thread, the steadiest of the three on this noisy two-core machine. Also time to first token
(``--ttft-n`` sequential streams on one connection, split into rounds that visit the fake
upstream directly, before and after in turn): what each build adds to the direct TTFT.

    .venv/bin/python -m bench.revisions --ref <before> [--after <ref>] [--both-orders] [--seconds 4] [--rounds 8]
                                         [--together-rounds 6] [--instructions 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import instructions as callgrind
from bench import ttft, wrk
from bench.cells import log, write_scripts
from bench.pair import Pair, add_arguments, pair_lines, summary
from bench.payloads import chat_body
from bench.procs import Processes, exit_on_sigterm
from bench.report import RESULTS, machine, write_results
from bench.stacks import (
    Stack,
    TurnoutBuild,
    ref_build,
    start_turnout,
    start_upstream,
    working_tree_build,
    write_turnout_config,
)
from tests.gateway_server import free_port

KINDS = ("json", "stream")
MODES = ("before", "after")


def builds(ref: str, after: str | None, work: Path) -> dict[str, TurnoutBuild]:
    """``after`` names a ref to export like ``before``; without it, the installed working tree."""
    before = ref_build(ref, work / "before")
    return {
        "before": before,
        "after": ref_build(after, work / "after") if after else working_tree_build(),
    }


def start(procs: Processes, build: TurnoutBuild, upstream: Stack, work: Path, mode: str) -> Stack:
    where = work / mode
    where.mkdir(exist_ok=True)
    stack = start_turnout(procs, build, upstream, where, name=f"turnout-{mode}")
    stack.name = mode
    return stack


def instructions(
    procs: Processes,
    upstream: Stack,
    work: Path,
    builds_: dict[str, TurnoutBuild],
    requests: int,
) -> dict[str, dict[str, dict[str, float]]]:
    counts: dict[str, dict[str, dict[str, float]]] = {}
    for kind in KINDS:
        for mode in MODES:
            where = work / f"count-{kind}-{mode}"
            where.mkdir(exist_ok=True)
            config = write_turnout_config(upstream, where)
            port = free_port()
            build = builds_[mode]
            log(f"instructions: {mode} {kind}, {requests} requests under callgrind")
            counted = callgrind.count(
                procs,
                f"{mode}-{kind}",
                build.argv(config, port),
                f"http://127.0.0.1:{port}",
                dict(upstream.headers),
                chat_body("bench", kind == "stream"),
                requests=requests,
                cwd=build.cwd or where,
            )
            counts.setdefault(kind, {})[mode] = counted.as_dict()
        counts[kind]["before_over_after"] = callgrind.ratio(
            counts[kind]["before"], counts[kind]["after"]
        )
    return counts


TTFT_ROUNDS = 3


def first_tokens(stacks: dict[str, Stack], n: int) -> dict[str, dict[str, float]]:
    """Median TTFT of each stack over rounds that take turns, and what turnout adds to direct."""
    per_round = max(1, n // TTFT_ROUNDS)
    p50s: dict[str, list[float]] = {name: [] for name in stacks}
    for round_number in range(TTFT_ROUNDS):
        names = list(stacks) if round_number % 2 == 0 else list(stacks)[::-1]
        for name in names:
            measured = ttft.measure(stacks[name], per_round, warmup=20)
            p50s[name].append(measured.p50_ms)
            log(f"TTFT round {round_number + 1}: {name} p50 {measured.p50_ms:.3f} ms")
    medians = {name: statistics.median(values) for name, values in p50s.items()}
    direct = medians.pop("direct")
    return {
        name: {"p50_ms": round(p50, 3), "added_ms": round(p50 - direct, 3)}
        for name, p50 in {"direct": direct, **medians}.items()
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One measurement, or two with the builds started in opposite orders (``--both-orders``).

    Which build starts first is worth a few percent here: A/A runs of one commit against
    itself measured the first-started 5% faster on json (alternating after/before 0.950,
    0.951 in two runs). With both orders, each ratio is the geometric mean of the two runs,
    which cancels that.
    """
    if not args.both_orders:
        return measure(args, work, MODES)
    runs = [measure(args, work / "first", MODES), measure(args, work / "second", MODES[::-1])]
    ratios = {
        kind: round(
            math.sqrt(runs[0]["after_over_before"][kind] * runs[1]["after_over_before"][kind]), 3
        )
        for kind in KINDS
    }
    return {**runs[0], "orders": runs, "after_over_before": ratios}


def measure(args: argparse.Namespace, work: Path, order: tuple[str, ...]) -> dict[str, Any]:
    alternating: dict[str, dict[str, Any]] = {}
    together: dict[str, dict[str, Any]] = {}
    work.mkdir(parents=True, exist_ok=True)
    chosen = builds(args.ref, args.after, work)
    with Processes(RESULTS / "logs") as procs:
        upstream = start_upstream(procs)
        started = {mode: start(procs, chosen[mode], upstream, work, mode) for mode in order}
        stacks = {mode: started[mode] for mode in MODES}
        pair = Pair(MODES, stacks, {m: write_scripts(s, work) for m, s in stacks.items()})
        pair.warm(KINDS)
        for kind in KINDS:
            rounds = pair.alternating(kind, args.seconds, args.rounds)
            alternating[kind] = {"rounds": rounds, "median": summary(rounds)}
            if args.together_rounds:
                rounds = pair.side_by_side(kind, args.seconds, args.together_rounds)
                together[kind] = {"rounds": rounds, "median": summary(rounds)}
        first = first_tokens({"direct": upstream, **stacks}, args.ttft_n) if args.ttft_n else {}
        for stack in stacks.values():
            procs.stop(stack.proc)
        counts = (
            instructions(procs, upstream, work, chosen, args.instructions)
            if args.instructions
            else {}
        )
    ratios = {kind: alternating[kind]["median"]["ratio"] for kind in KINDS}
    return {
        "machine": machine(),
        "settings": vars(args),
        "builds": {mode: build.label for mode, build in chosen.items()},
        "alternating": alternating,
        "side_by_side": together,
        "ttft": first,
        "instructions_per_request": counts,
        "after_over_before": ratios,
        "started_first": order[0],
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"before: {result['builds']['before']}, after: {result['builds']['after']}"]
    for number, one in enumerate(result.get("orders", ()), 1):
        lines.append(
            f"run {number} ({one['started_first']} started first): after/before "
            + json.dumps(one["after_over_before"])
        )
    for kind in KINDS:
        lines += pair_lines(MODES, kind, result)
    for name, first in result["ttft"].items():
        added = f", adds {first['added_ms']:.3f} ms to direct" if name != "direct" else ""
        lines.append(f"TTFT {name}: p50 {first['p50_ms']:.3f} ms{added}")
    for kind, count in result["instructions_per_request"].items():
        lines.append(callgrind.report_line(MODES, kind, count))
    lines.append("after/before throughput: " + json.dumps(result["after_over_before"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", required=True, help="the git ref to compare against")
    parser.add_argument(
        "--after", default=None, help="a git ref to run as 'after' (default: the working tree)"
    )
    add_arguments(parser, rounds=8, together=6)
    parser.add_argument(
        "--instructions", type=int, default=0, help="requests counted under callgrind; 0: skip"
    )
    parser.add_argument("--ttft-n", type=int, default=300, help="TTFT streams per stack; 0: skip")
    parser.add_argument(
        "--both-orders",
        action="store_true",
        help="measure twice, each build started first once; ratios are geometric means",
    )
    args = parser.parse_args()
    exit_on_sigterm()
    wrk.require_wrk()
    if args.instructions:
        callgrind.require_valgrind()
    with tempfile.TemporaryDirectory(prefix="turnout-revisions-") as tmp:
        result = run(args, Path(tmp))
    path = write_results("revisions", result)
    print(report(result))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
