"""Where a request's time goes in turnout, stage by stage: cProfile under wrk, before and after.

    .venv/bin/python -m bench.stages [--ref <before>] [--kind json|stream] [--seconds 8]

Each build (the working tree, and the git ref when given) runs governed (a virtual key, rate
limits per key, agent and model, the usage log and metrics on: ``bench/governance.py``'s ``on``
mode) under ``python -m cProfile`` in front of the fake upstream, loaded by wrk at c=64. Then
the per-request cumulative time of each stage's functions is read from the profile: the stages
are named by function, so builds whose code is laid out differently (``gateway/api/ingress.py``
before issue 13, ``gateway/pipeline/`` after) are compared stage for stage.

cProfile adds its own cost to every Python call, so the absolute microseconds are inflated
(roughly 2x here) and a stage made of many small calls looks heavier than it is; what the table
is for is the split, and a stage's change between builds in one run. Instruction counts
(``bench/instructions.py``) give the totals that are not inflated.
"""

from __future__ import annotations

import argparse
import pstats
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import governance, wrk
from bench.cells import log, write_scripts
from bench.procs import Processes, exit_on_sigterm, wait_ready
from bench.report import RESULTS, machine, write_results
from bench.stacks import Stack, TurnoutBuild, ref_build, start_upstream, working_tree_build
from tests.gateway_server import free_port


@dataclass(frozen=True)
class Stage:
    name: str
    # (file suffix, function name) pairs; the stage's time is the largest cumulative time
    # among them found in the profile (a stage is one function in each layout).
    functions: tuple[tuple[str, str], ...]


STAGES = (
    Stage("server: uvicorn protocol to the app", (("httptools_impl.py", "run_asgi"),)),
    Stage(
        "routing to the endpoint (Litestar, or HotPaths)",
        (("litestar/app.py", "__call__"), ("pipeline/endpoint.py", "__call__")),
    ),
    Stage(
        "the whole request in turnout's code",
        (("api/ingress.py", "__call__"), ("pipeline/run.py", "run")),
    ),
    Stage("read the body", (("gateway/asgi.py", "read_body"),)),
    Stage("identify the caller (key)", (("gateway/auth.py", "identify"),)),
    Stage("decode the request", (("api/proxy.py", "prepare"),)),
    Stage(
        "admission (permission, budget, rate limits)",
        (("api/ingress.py", "_admit"), ("pipeline/admission.py", "admit")),
    ),
    Stage(
        "disconnect watcher task",
        (("gateway/asgi.py", "__init__"), ("gateway/asgi.py", "_watch")),
    ),
    Stage(
        "answer (forward, wait, render, send)",
        (("api/ingress.py", "_complete"), ("pipeline/relay.py", "complete")),
    ),
    Stage("stream relay", (("api/ingress.py", "_stream"), ("pipeline/relay.py", "stream"))),
    Stage("forwarder: fallback loop and attempt", (("gateway/forwarder.py", "_with_fallback"),)),
    Stage("router plan", (("gateway/router.py", "plan"),)),
    Stage("adapter: aiohttp request and body", (("adapters/http.py", "post_for_body"),)),
    Stage("send the answer", (("gateway/asgi.py", "send_bytes"),)),
    Stage(
        "accounting (metrics, usage row, limiter settlement)",
        (("api/ingress.py", "_finish"), ("pipeline/accounting.py", "settle")),
    ),
)


def profile(
    procs: Processes, build: TurnoutBuild, upstream: Stack, work: Path, kind: str, seconds: float
) -> dict[str, Any]:
    """Run ``build`` governed under cProfile, load it, stop it; per-stage µs per request."""
    work.mkdir(parents=True, exist_ok=True)
    database = work / "bench.db"
    headers = dict(upstream.headers)
    secret = governance.create_key_with(build.prefix, build.cwd, database)
    headers["Authorization"] = f"Bearer {secret}"
    config = work / "turnout.yaml"
    config.write_text(governance.config(upstream, database, governed=True, headers="refusals"))
    port = free_port()
    out = work / "turnout.prof"
    serve = build.argv(config, port)
    # ``python -m gateway serve ...`` or the ``turnout`` script: cProfile runs the module.
    argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "gateway"]
    argv += serve[serve.index("serve") :]
    proc = procs.spawn(f"cprofile-{work.name}", argv, cwd=build.cwd or work)
    origin = f"http://127.0.0.1:{port}"
    wait_ready(proc, origin + "/health", timeout=60)
    stack = Stack(
        work.name, origin + "/v1/chat/completions", "bench", proc, origin, headers=headers
    )
    script = write_scripts(stack, work)[kind]
    warm = wrk.run(stack.chat_url, script, 64, 1)  # profiled too, so counted below
    result = wrk.run(stack.chat_url, script, 64, seconds)
    proc.popen.send_signal(signal.SIGINT)
    proc.popen.wait(30)
    return stages_of(pstats.Stats(str(out)), warm.requests + result.requests, result.rps)


def stages_of(stats: pstats.Stats, requests: int, rps: float) -> dict[str, Any]:
    table: dict[str, float] = {}
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for stage in STAGES:
        best = 0.0
        for (file, _line, function), (_cc, _calls, _self, cumulative, _callers) in raw.items():
            if any(file.endswith(s) and function == f for s, f in stage.functions):
                best = max(best, cumulative)
        table[stage.name] = round(best / requests * 1e6, 1) if best else 0.0
    return {"requests": requests, "rps": round(rps), "us_per_request": table}


def report(result: dict[str, Any]) -> str:
    builds = list(result["builds"])
    widths = max(len(s.name) for s in STAGES)
    lines = [
        f"{result['kind']} at c=64, governed, under cProfile (inflated; compare the columns)",
        f"{'stage':<{widths}}  " + "  ".join(f"{b:>14}" for b in builds),
    ]
    for stage in STAGES:
        cells = [result["builds"][b]["us_per_request"][stage.name] for b in builds]
        lines.append(f"{stage.name:<{widths}}  " + "  ".join(f"{c:>11.1f} µs" for c in cells))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", default=None, help="also profile this git ref (before)")
    parser.add_argument("--kind", choices=("json", "stream"), default="json")
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    exit_on_sigterm()
    wrk.require_wrk()
    builds: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="turnout-stages-") as tmp,
        Processes(RESULTS / "logs") as procs,
    ):
        work = Path(tmp)
        upstream = start_upstream(procs)
        chosen = {"working tree": working_tree_build()}
        if args.ref:
            chosen = {args.ref: ref_build(args.ref, work / "ref"), **chosen}
        for name, build in chosen.items():
            log(f"profiling {name}")
            builds[name] = profile(
                procs, build, upstream, work / name.replace(" ", "-"), args.kind, args.seconds
            )
    result = {"machine": machine(), "settings": vars(args), "kind": args.kind, "builds": builds}
    path = write_results("stages", result)
    print(report(result))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
