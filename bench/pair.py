"""Two turnout servers compared under the same load: alternating rounds and side by side.

Shared by the benchmarks that ask "how much does B cost over A" (``bench.governance``: off vs
on; ``bench.revisions``: a git ref vs the working tree). Both servers stay up for the whole
run, in front of one fake upstream; wrk drives them at ``CONNECTIONS``.

alternating  wrk loads one server at a time for ``seconds``, A and B in turn (the order flips
             every round); the per-round ratio B/A, whose median is reported, since this
             machine's speed drifts by tens of percent from one minute to the next.
side by side both servers loaded at once, each by its own wrk: whatever the machine does then,
             it does to both. Reported per round: the throughput ratio B/A, and CPU per request
             of each server's event-loop thread (the one that limits a turnout process) and of
             the whole process, as A/B (below 1: B costs more).
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import wrk
from bench.cells import NOISY, log
from bench.procs import cpu_seconds, thread_cpu_seconds, wait_quiet
from bench.stacks import Stack

CONNECTIONS = 64


class Pair:
    """Both servers (``modes[0]`` is the baseline A), their wrk scripts, answers per server."""

    def __init__(
        self,
        modes: tuple[str, str],
        stacks: dict[str, Stack],
        scripts: dict[str, dict[str, Path]],
    ) -> None:
        self.modes = modes
        self.stacks = stacks
        self.scripts = scripts
        self.answered = dict.fromkeys(modes, 0)

    def load(self, mode: str, kind: str, seconds: float) -> wrk.WrkResult:
        stack = self.stacks[mode]
        result = wrk.run(stack.chat_url, self.scripts[mode][kind], CONNECTIONS, seconds)
        self.answered[mode] += result.requests
        if result.errors:
            log(f"  {mode} {kind}: {result.errors} errors {result.error_detail}")
        return result

    def warm(self, kinds: tuple[str, ...], seconds: float = 2) -> None:
        """Fill connection pools and caches; counted, not reported."""
        for kind in kinds:
            for mode in self.modes:
                self.load(mode, kind, seconds)

    def alternating(self, kind: str, seconds: float, rounds: int) -> list[dict[str, float]]:
        a, b = self.modes
        out = []
        for round_number in range(rounds):
            order = self.modes if round_number % 2 == 0 else self.modes[::-1]
            wait_quiet(30, NOISY)
            rps = {mode: self.load(mode, kind, seconds).rps for mode in order}
            out.append({**rps, "ratio": rps[b] / rps[a]})
            log(
                f"alternating {kind} round {round_number + 1}: {a} {rps[a]:,.0f} req/s, "
                f"{b} {rps[b]:,.0f} req/s, {b}/{a} {out[-1]['ratio']:.3f}"
            )
        return out

    def side_by_side(self, kind: str, seconds: float, rounds: int) -> list[dict[str, float]]:
        a, b = self.modes
        out = []
        with ThreadPoolExecutor(len(self.modes)) as pool:
            for round_number in range(rounds):
                wait_quiet(30, NOISY)
                pids = {mode: self.stacks[mode].proc.pid for mode in self.modes}
                main0 = {m: thread_cpu_seconds(p) for m, p in pids.items()}
                all0 = {m: cpu_seconds(p) for m, p in pids.items()}
                runs = {m: pool.submit(self.load, m, kind, seconds) for m in self.modes}
                results = {m: f.result() for m, f in runs.items()}
                row: dict[str, float] = {}
                for mode, result in results.items():
                    n = max(result.requests, 1)
                    row[f"{mode}_rps"] = result.rps
                    row[f"{mode}_main_us"] = (
                        (thread_cpu_seconds(pids[mode]) - main0[mode]) / n * 1e6
                    )
                    row[f"{mode}_process_us"] = (cpu_seconds(pids[mode]) - all0[mode]) / n * 1e6
                row["rps_ratio"] = row[f"{b}_rps"] / row[f"{a}_rps"]
                row["main_cpu_ratio"] = row[f"{a}_main_us"] / row[f"{b}_main_us"]
                row["process_cpu_ratio"] = row[f"{a}_process_us"] / row[f"{b}_process_us"]
                out.append(row)
                log(
                    f"side by side {kind} round {round_number + 1}: {b}/{a} throughput "
                    f"{row['rps_ratio']:.3f}, event-loop CPU per request "
                    f"{row['main_cpu_ratio']:.3f}, process CPU per request "
                    f"{row['process_cpu_ratio']:.3f}"
                )
        return out


def summary(rounds: list[dict[str, float]]) -> dict[str, float]:
    keys = rounds[0].keys() if rounds else ()
    return {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys}


def pair_lines(
    modes: tuple[str, str], kind: str, result: dict[str, Any], note: str = ""
) -> list[str]:
    """The report's lines for one kind: the alternating medians (``note`` after them), then
    the side-by-side medians when that measure ran."""
    a, b = modes
    m = result["alternating"][kind]["median"]
    lines = [
        f"{kind}@{CONNECTIONS}: alternating {a} {m[a]:,.0f} req/s, {b} {m[b]:,.0f} req/s, "
        f"{b}/{a} {m['ratio']:.3f}{note}"
    ]
    if kind in result["side_by_side"]:
        lines.append(side_by_side_line(modes, kind, result["side_by_side"][kind]["median"]))
    return lines


def add_arguments(parser: argparse.ArgumentParser, rounds: int, together: int) -> None:
    """``--seconds``, ``--rounds`` and ``--together-rounds``, as every paired benchmark takes."""
    parser.add_argument("--seconds", type=float, default=4, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=rounds, help="alternating rounds per kind")
    parser.add_argument("--together-rounds", type=int, default=together, help="side-by-side rounds")


def side_by_side_line(modes: tuple[str, str], kind: str, median: dict[str, float]) -> str:
    a, b = modes
    t = median
    return (
        f"{kind}@{CONNECTIONS} side by side: throughput {b}/{a} {t['rps_ratio']:.3f}, "
        f"event-loop CPU/request {t['main_cpu_ratio']:.3f} "
        f"({t[f'{a}_main_us']:.0f} vs {t[f'{b}_main_us']:.0f} µs), process CPU/request "
        f"{t['process_cpu_ratio']:.3f} ({t[f'{a}_process_us']:.0f} vs "
        f"{t[f'{b}_process_us']:.0f} µs)"
    )
