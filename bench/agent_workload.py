"""An orchestrator + sub-agent workload through turnout on real llama-server roles (issue 14):
grouping by role next to strict FIFO (``engines.grouping: false``), in one run.

Two roles share one slot (one engine at a time, as on a single GPU): ``orch`` (tiny-hello)
and ``sub`` (tiny-toolcall). Each of ``--clients`` agents loops for ``--seconds``: one
orchestrator call, then ``--subagents`` sub-agents at once, each making ``--turns`` calls in a
row, then the orchestrator again, so the two roles alternate. A random pause of up to
``--think`` seconds before each sub-agent call and each orchestrator turn (tool runs, and the
generation a real model would spend) keeps the agents out of step. Every call streams; its
wait is the time to its first token (queueing, the swap it waits for, and a tiny model's
prefill of a few ms).

Three modes, each from a fresh turnout: ``grouping`` (turnout's defaults: grouping by role,
no residency), ``residency`` (grouping with ``engines.min_residency_seconds``) and ``fifo``
(``engines.grouping: false``). Per mode: requests, requests per swap, swaps per minute,
p50/p99 and the longest wait, and the check the issue asks for: the longest wait stays within
``max_wait_seconds`` + one load (the longest load turnout measured). Strict FIFO has no such
bound; its check is printed to compare.

    .venv/bin/python -m bench.agent_workload [--seconds 120] [--clients 4] [--subagents 2]
        [--turns 2] [--think 1.0] [--max-wait 10] [--residency 4]
        [--modes grouping,residency,fifo]

Results go to bench/results/agent_workload-latest.json; turnout's and the engines' logs to
bench/results/logs/agent_workload/. Run it alone on a quiet machine: the waits are wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procs import Processes, free_port, wait_ready  # noqa: E402
from gateway.engines.builtin import LLAMACPP_COMMAND  # noqa: E402
from tests.engines.engines import ensure_models, llama_server_binary  # noqa: E402

RESULTS = ROOT / "bench" / "results"


@dataclass
class Call:
    role: str
    started: float
    wait: float = 0.0
    # From the first token to the last: the call's own service time.
    generating: float = 0.0
    ok: bool = False


@dataclass
class Mode:
    name: str
    engines: dict[str, Any]
    calls: list[Call] = field(default_factory=list)


def role_config(binary: Path, model: Path) -> dict[str, Any]:
    return {
        "engine": "llamacpp",
        "model": str(model),
        # Four slots on one thread, as the tests and bench/swap.py run it.
        "command": [str(binary), *LLAMACPP_COMMAND[1:], "-np", "4", "-t", "1"],
        "start_timeout_seconds": 60,
        # The KV cache kept across swaps is another feature: measured here is the scheduling.
        "kv_cache": False,
    }


def turnout_config(models: dict[str, Path], binary: Path, mode: Mode, logs: Path) -> dict[str, Any]:
    return {
        "roles": {
            "orch": role_config(binary, models["tiny-hello"]),
            "sub": role_config(binary, models["tiny-toolcall"]),
        },
        "engines": {"wait_timeout_seconds": 300, "log_dir": str(logs), **mode.engines},
        "server": {"log_level": "info", "keepalive_seconds": 1, "database": ":memory:"},
    }


def write_config(directory: Path, config: dict[str, Any]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def stream(
    session: aiohttp.ClientSession, url: str, role: str, agent: str, tokens: int
) -> Call:
    call = Call(role, time.perf_counter())
    body = {
        "model": role,
        "messages": [{"role": "user", "content": f"{agent}: next step"}],
        "max_tokens": tokens,
        # The tiny models stop after one short sentence: generating ``tokens`` anyway gives
        # each call a real model's service time, during which the other role's calls queue.
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"X-Agent-Id": agent}
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
        async for line in response.content:
            if not call.wait and line.startswith(b"data: {"):
                call.wait = time.perf_counter() - call.started
        call.ok = response.status == 200 and call.wait > 0
    call.generating = time.perf_counter() - call.started - call.wait
    return call


async def agent(
    session: aiohttp.ClientSession, url: str, n: int, args: argparse.Namespace, until: float
) -> list[Call]:
    """One orchestrator: a call, then its sub-agents (each ``--turns`` calls in a row), then
    the orchestrator again. Between calls, a random pause stands for tool runs and the
    generation a real model would spend: it keeps the agents out of step (tiny models answer
    in milliseconds, and agents with no pause fall into lockstep, which hides any policy)."""
    rng = random.Random(n)
    calls: list[Call] = []

    async def think() -> None:
        await asyncio.sleep(rng.uniform(0, args.think))

    async def subagent(i: int) -> None:
        for _ in range(args.turns):
            await think()
            calls.append(await stream(session, url, "sub", f"sub-{n}-{i}", args.tokens))

    while time.perf_counter() < until:
        calls.append(await stream(session, url, "orch", f"orchestrator-{n}", args.tokens))
        await asyncio.gather(*(subagent(i) for i in range(args.subagents)))
        await think()
    return calls


def swaps(metrics: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("turnout_engine_swaps_total{")
    )


async def run_mode(
    mode: Mode, args: argparse.Namespace, models: dict[str, Path], binary: Path, logs: Path
) -> dict[str, Any]:
    mode_logs = logs / mode.name
    config = write_config(mode_logs, turnout_config(models, binary, mode, mode_logs))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gateway", "serve", "--config", config, "--port", str(port)]
    with Processes(mode_logs) as procs:
        proc = procs.spawn("turnout", argv, cwd=ROOT)
        wait_ready(proc, url + "/health", timeout=60)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # Both roles loaded once first: their load times are measured, and the run starts
            # from the same place in both modes (orch loaded).
            for role in ("sub", "orch"):
                async with session.post(f"{url}/engine/switch/{role}?wait=true") as response:
                    await response.read()
            async with session.get(url + "/metrics") as response:
                before = swaps(await response.text())
            started = time.perf_counter()
            until = started + args.seconds
            per_agent = await asyncio.gather(
                *(agent(session, url, n, args, until) for n in range(args.clients))
            )
            elapsed = time.perf_counter() - started
            async with session.get(url + "/metrics") as response:
                after = swaps(await response.text())
            async with session.get(url + "/engine/status") as response:
                status = await response.json()
    mode.calls = [c for calls in per_agent for c in calls]
    loads = [
        e["memory"]["load_seconds"] or 0.0
        for e in status["engines"].values()
        if isinstance(e.get("memory"), dict)
    ]
    return summary(mode, after - before, elapsed, max(loads, default=0.0), args.max_wait)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(
    mode: Mode, swap_count: float, elapsed: float, load: float, max_wait: float
) -> dict[str, Any]:
    waits = [c.wait for c in mode.calls if c.ok]
    failed = sum(1 for c in mode.calls if not c.ok)
    longest = max(waits, default=0.0)
    bound = max_wait + load
    return {
        "mode": mode.name,
        "engines": mode.engines,
        "seconds": round(elapsed, 1),
        "requests": len(waits),
        "failed": failed,
        "swaps": int(swap_count),
        "requests_per_swap": round(len(waits) / swap_count, 1) if swap_count else None,
        "swaps_per_minute": round(swap_count / elapsed * 60, 1),
        "wait_p50_s": round(percentile(waits, 0.5), 3),
        "wait_p99_s": round(percentile(waits, 0.99), 3),
        "wait_mean_s": round(statistics.fmean(waits), 3) if waits else 0.0,
        "generating_p50_s": round(percentile([c.generating for c in mode.calls if c.ok], 0.5), 3),
        "longest_wait_s": round(longest, 3),
        "longest_load_s": round(load, 3),
        "bound_s": round(bound, 3),
        "within_bound": longest <= bound,
        "by_role": {
            role: {
                "requests": sum(1 for c in mode.calls if c.ok and c.role == role),
                "wait_p50_s": round(
                    percentile([c.wait for c in mode.calls if c.ok and c.role == role], 0.5), 3
                ),
            }
            for role in ("orch", "sub")
        },
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        ("requests", "requests"),
        ("failed", "failed"),
        ("swaps", "swaps"),
        ("requests per swap", "requests_per_swap"),
        ("swaps per minute", "swaps_per_minute"),
        ("generating p50 (s)", "generating_p50_s"),
        ("wait p50 (s)", "wait_p50_s"),
        ("wait p99 (s)", "wait_p99_s"),
        ("longest wait (s)", "longest_wait_s"),
        ("max_wait + one load (s)", "bound_s"),
        ("within that bound", "within_bound"),
    ]
    lines = [f"{'':26}" + "".join(f"{r['mode']:>14}" for r in results)]
    for label, key in rows:
        lines.append(f"{label:26}" + "".join(f"{r[key]!s:>14}" for r in results))
    return "\n".join(lines)


def modes(args: argparse.Namespace) -> list[Mode]:
    known = {
        "grouping": Mode("grouping", {"grouping": True, "max_wait_seconds": args.max_wait}),
        "residency": Mode(
            "residency",
            {
                "grouping": True,
                "max_wait_seconds": args.max_wait,
                "min_residency_seconds": args.residency,
            },
        ),
        "fifo": Mode("fifo", {"grouping": False, "max_wait_seconds": args.max_wait}),
    }
    return [known[name] for name in args.modes.split(",")]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    binary = llama_server_binary()
    if binary is None:
        raise SystemExit("llama-server missing: run tests/engines/build_llama_server.sh")
    models = ensure_models()
    logs = RESULTS / "logs" / "agent_workload"
    results = []
    for mode in modes(args):
        print(f"{mode.name}: {args.seconds:g} s, {args.clients} agents ...", flush=True)
        results.append(await run_mode(mode, args, models, binary, logs))
    report = {
        "workload": {
            "seconds": args.seconds,
            "clients": args.clients,
            "subagents": args.subagents,
            "turns": args.turns,
            "think_seconds": args.think,
            "max_tokens": args.tokens,
        },
        "results": results,
    }
    print(table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agent_workload-latest.json").write_text(json.dumps(report, indent=2))
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="per mode (default 120)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent orchestrators")
    parser.add_argument("--subagents", type=int, default=2, help="sub-agents per orchestrator turn")
    parser.add_argument("--turns", type=int, default=2, help="calls per sub-agent")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per call")
    parser.add_argument("--think", type=float, default=1.0, help="max random pause between calls")
    parser.add_argument("--max-wait", type=float, default=10, help="engines.max_wait_seconds")
    parser.add_argument(
        "--residency", type=float, default=4, help="engines.min_residency_seconds (residency)"
    )
    parser.add_argument("--modes", default="grouping,residency,fifo")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
