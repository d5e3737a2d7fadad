"""`turnout serve` on the shipped routing.yaml: time to ready and idle RSS, plugins on vs off.

    .venv/bin/python -m bench.startup [--runs 5] [--settle 2] [--no-first-use]

Issue 16 enabled the memory and tools plugins in the shipped routing.yaml and asked that idle
RSS and start-up time stay where they were without them (80 MB and 0.6 s on the 2-core bench
machine when the issue was filed). Two variants of the shipped file, in one run, their runs
interleaved so that a busy moment of the machine lands on both alike:

    memory+tools   routing.yaml as shipped (plugins.enabled: [memory, tools])
    plugins off    the same file with plugins.enabled: []

Only ``server.database`` is moved into a temporary folder (the memory database goes beside it),
and provider keys (``*_API_KEY``) and ``TURNOUT_*`` variables are left out, as for a newcomer.

Python's bytecode is cached (in a folder of the run's own, after one unrecorded start of each
variant), as in an installed turnout. Per run: spawn ``turnout serve``, poll ``GET /health`` every 10 ms until the first 200 (time
to ready: interpreter start-up, imports, config, the first probes; and the CPU seconds the
process used by then, which other load on the machine disturbs less), then wait ``--settle``
seconds and read ``VmRSS`` (idle RSS) and whether numpy or onnxruntime are mapped into the
process (they must not be: the embedding model loads on memory's first use). Medians of
``--runs``. Then, unless ``--no-first-use``: one more memory+tools gateway, its first
``POST /v1/memory/store`` timed, and RSS after it, which is what memory's first use costs.

Prints a table and writes bench/results/startup-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Proc, Processes, cpu_seconds, free_port, memory_kb, wait_ready
from bench.report import RESULTS, machine, write_results
from bench.stacks import working_tree_build

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, list[str] | None] = {"memory+tools": None, "plugins off": []}
# When issue 16 was filed, before memory and tools were on by default.
ISSUE_BASELINE = {"idle_rss_mb": 80.0, "ready_s": 0.6}
# Shared objects that mean the embedding model (or numpy for it) was loaded.
HEAVY = ("_multiarray_umath", "onnxruntime_pybind11_state")


def config_for(enabled: list[str] | None, work: Path) -> Path:
    """The shipped routing.yaml with its database in ``work`` (and plugins.enabled replaced)."""
    raw: dict[str, Any] = yaml.safe_load((ROOT / "routing.yaml").read_text())
    raw.setdefault("server", {})["database"] = str(work / "turnout.db")
    if enabled is not None:
        raw.setdefault("plugins", {})["enabled"] = enabled
    path = work / "routing.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def as_a_newcomer() -> None:
    """No provider keys and no TURNOUT_* settings (spawn() passes on this process's environment)."""
    for name in list(os.environ):
        if name.endswith("_API_KEY") or name.startswith("TURNOUT_"):
            del os.environ[name]


def compiled_once(tmp: Path) -> None:
    """Bytecode cached as an installed turnout has it (pip compiles it at install), in a folder
    of this run's: with PYTHONDONTWRITEBYTECODE set (as on the dev machine) every start would
    compile every module again, 0.1-0.2 s of it with the plugins on."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")


def heavy_loaded(pid: int) -> list[str]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return [name for name in HEAVY if name in maps]


def start(procs: Processes, name: str, config: Path) -> tuple[Proc, str, float, float]:
    """A gateway on ``config``, answering: (it, its URL, seconds to ready, its CPU seconds
    by then). The CPU time is what start-up itself costs, steady where others load the machine."""
    port = free_port()
    argv = working_tree_build().argv(config, port)
    started = time.perf_counter()
    proc = procs.spawn(name, argv, cwd=config.parent)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/health", timeout=60, interval=0.01)
    return proc, url, time.perf_counter() - started, cpu_seconds(proc.pid)


def one_run(procs: Processes, name: str, config: Path, settle: float) -> dict[str, Any]:
    proc, _, ready, cpu = start(procs, name, config)
    time.sleep(settle)
    rss = memory_kb(proc.pid) / 1024
    heavy = heavy_loaded(proc.pid)
    procs.stop(proc)
    return {"ready_s": ready, "ready_cpu_s": cpu, "idle_rss_mb": rss, "heavy_loaded": heavy}


def first_use(procs: Processes, config: Path, settle: float) -> dict[str, Any]:
    """One memory+tools gateway: idle, then its first memory store (the model loads then)."""
    proc, url, _, _ = start(procs, "startup-first-use", config)
    time.sleep(settle)
    idle = memory_kb(proc.pid) / 1024
    body = json.dumps({"content": "We deploy on Fridays after 16:00 UTC."}).encode()
    request = urllib.request.Request(
        f"{url}/v1/memory/store", body, {"content-type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        status = answer.status
    first_store = time.perf_counter() - started
    after = memory_kb(proc.pid) / 1024
    heavy = heavy_loaded(proc.pid)
    procs.stop(proc)
    return {
        "status": status,
        "first_store_s": round(first_store, 3),
        "idle_rss_mb": round(idle, 1),
        "rss_after_first_store_mb": round(after, 1),
        "heavy_loaded_after": heavy,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ready_s_median": round(statistics.median(r["ready_s"] for r in runs), 3),
        "ready_cpu_s_median": round(statistics.median(r["ready_cpu_s"] for r in runs), 3),
        "idle_rss_mb_median": round(statistics.median(r["idle_rss_mb"] for r in runs), 1),
        "ready_s": [round(r["ready_s"], 3) for r in runs],
        "ready_cpu_s": [round(r["ready_cpu_s"], 3) for r in runs],
        "idle_rss_mb": [round(r["idle_rss_mb"], 1) for r in runs],
        "heavy_loaded_at_idle": sorted({h for r in runs for h in r["heavy_loaded"]}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before RSS")
    parser.add_argument("--no-first-use", action="store_true")
    args = parser.parse_args()
    as_a_newcomer()
    results: dict[str, Any] = {"machine": machine(), "issue_baseline": ISSUE_BASELINE}
    with tempfile.TemporaryDirectory() as tmp, Processes(RESULTS / "logs") as procs:
        compiled_once(Path(tmp))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
        for name, enabled in VARIANTS.items():  # unrecorded: writes the bytecode cache
            work = Path(tmp) / f"warm-up-{len(name)}"
            work.mkdir()
            one_run(procs, "startup-warm-up", config_for(enabled, work), 0)
        for i in range(args.runs):
            for name, enabled in VARIANTS.items():
                work = Path(tmp) / f"{name.replace('+', '-').replace(' ', '-')}-{i}"
                work.mkdir()
                config = config_for(enabled, work)
                runs[name].append(one_run(procs, f"startup-{work.name}", config, args.settle))
        results["variants"] = {name: summary(r) for name, r in runs.items()}
        if not args.no_first_use:
            work = Path(tmp) / "first-use"
            work.mkdir()
            results["memory_first_use"] = first_use(procs, config_for(None, work), args.settle)
    results["loadavg_at_end"] = os.getloadavg()
    print(render(results))
    write_results("startup", results)
    return 0


def render(results: dict[str, Any]) -> str:
    base = results["issue_baseline"]
    head = f"{'variant':<16}{'ready':>9}{'CPU to ready':>14}{'idle RSS':>11}  numpy/onnxruntime at idle"
    lines = [
        head + "   (medians)",
        f"{'issue baseline':<16}{base['ready_s']:>7.2f} s{'-':>14}{base['idle_rss_mb']:>8.1f} MB",
    ]
    for name, row in results["variants"].items():
        heavy = ", ".join(row["heavy_loaded_at_idle"]) or "no"
        lines.append(
            f"{name:<16}{row['ready_s_median']:>7.2f} s{row['ready_cpu_s_median']:>12.2f} s"
            f"{row['idle_rss_mb_median']:>8.1f} MB  {heavy}"
        )
    first = results.get("memory_first_use")
    if first:
        lines.append(
            f"memory's first store: {first['first_store_s']:.2f} s, RSS "
            f"{first['idle_rss_mb']:.1f} -> {first['rss_after_first_store_mb']:.1f} MB"
        )
    start, end = results["machine"]["loadavg_at_start"], results["loadavg_at_end"]
    lines.append(
        f"load average at start {tuple(round(x, 2) for x in start)}, "
        f"at end {tuple(round(x, 2) for x in end)}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
