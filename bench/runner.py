"""The tail every wrk benchmark's ``main`` shares: checks, a scratch folder, the results file."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import instructions as callgrind
from bench import wrk
from bench.cells import log
from bench.procs import exit_on_sigterm
from bench.report import write_results

Run = Callable[[argparse.Namespace, Path], dict[str, Any]]


def run_benchmark(
    name: str,
    args: argparse.Namespace,
    run: Run,
    report: Callable[[dict[str, Any]], str],
    valgrind: bool = False,
) -> int:
    """``run(args, scratch)`` once, its result written to bench/results/NAME-*.json and
    ``report(result)`` printed; wrk (and valgrind, when instructions are counted) required."""
    exit_on_sigterm()
    wrk.require_wrk()
    if valgrind:
        callgrind.require_valgrind()
    with tempfile.TemporaryDirectory(prefix=f"turnout-{name.replace('_', '-')}-") as tmp:
        result = run(args, Path(tmp))
    path = write_results(name, result)
    log(f"results: {path}")
    print(report(result))
    print(f"results: {path}")
    return 0
