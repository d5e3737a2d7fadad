"""Memory-budget eviction on three real llama-server roles (issue 14), with its numbers.

Three roles whose measured sizes allow two at once under ``engines.memory_budget_mb``, all in
one group that could hold the three, so memory alone decides:

1. ``frees enough``: small (5 MB model, 4096 tokens) and mid (43 MB) are loaded, small first;
   big (43 MB, 65536 tokens) is asked for. small is the least recently used and the cheapest
   to reload, but unloading it frees too little: mid must go.
2. ``least reload cost``: mid, then small (now with 65536 tokens), are loaded; big (4096
   tokens) is asked for. Unloading either frees enough; mid is the least recently used, but
   small reloads faster: small goes.

For each role: its estimate before the first load (GGUF + KV cache + overhead), what turnout
measured after it (the engine's resident memory) and its measured load time; then which role
was evicted and turnout's own reason (its log line). ``tests/test_engines_eviction.py`` asserts
the same scenarios.

    .venv/bin/python -m bench.eviction
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procs import Processes, free_port, wait_ready  # noqa: E402
from gateway.engines.builtin import LLAMACPP_COMMAND  # noqa: E402
from gateway.engines.memory import Candidate, cheapest_evictions  # noqa: E402
from tests.engines.engines import ensure_models, llama_server_binary  # noqa: E402

RESULTS = ROOT / "bench" / "results"
USER = [{"role": "user", "content": "hi"}]


def scenarios(models: dict[str, Path]) -> list[dict[str, Any]]:
    return [
        {
            "name": "frees enough",
            "budget_mb": 200,
            "roles": {
                "small": (models["tiny-spm"], 4096),
                "mid": (models["tiny-hello"], 4096),
                "big": (models["tiny-toolcall"], 65536),
            },
            "load": ["small", "mid"],
            "then": "big",
            "expected": "mid",
        },
        {
            "name": "least reload cost",
            "budget_mb": 240,
            "roles": {
                "small": (models["tiny-spm"], 65536),
                "mid": (models["tiny-hello"], 4096),
                "big": (models["tiny-toolcall"], 4096),
            },
            "load": ["mid", "small"],
            "then": "big",
            "expected": "small",
        },
    ]


def config(scenario: dict[str, Any], binary: Path, logs: Path) -> dict[str, Any]:
    command = [str(binary), *LLAMACPP_COMMAND[1:], "-np", "4", "-t", "1"]
    roles = {
        name: {
            "engine": "llamacpp",
            "model": str(model),
            "context": context,
            "command": command,
            "kv_cache": False,
        }
        for name, (model, context) in scenario["roles"].items()
    }
    return {
        "roles": roles,
        "engines": {
            "memory_budget_mb": scenario["budget_mb"],
            "groups": {"local": {"members": list(roles), "max_loaded": len(roles)}},
            "log_dir": str(logs),
        },
        "server": {"log_level": "info", "database": ":memory:"},
    }


def write_config(directory: Path, raw: dict[str, Any]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "turnout.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def reason(log: Path, role: str) -> str:
    """turnout's own log line for the eviction made for ``role``."""
    for line in log.read_text(errors="replace").splitlines():
        if f"for role {role}:" in line and "unloading" in line:
            return line[line.index("unloading") :]
    return "(no eviction logged)"


async def memory_of(session: aiohttp.ClientSession, url: str, role: str) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    for _ in range(200):
        async with session.get(url + "/engine/status") as response:
            memory = (await response.json())["engines"][role]["memory"]
        if memory["measured_mb"]:
            break
        await asyncio.sleep(0.05)
    return memory


async def states(session: aiohttp.ClientSession, url: str) -> dict[str, str]:
    """Once nothing is starting or stopping any more."""
    found: dict[str, str] = {}
    for _ in range(200):
        async with session.get(url + "/engine/status") as response:
            engines = (await response.json())["engines"]
        found = {name: engine["state"] for name, engine in engines.items()}
        if all(s in ("ready", "stopped") for s in found.values()):
            break
        await asyncio.sleep(0.05)
    return found


async def run(scenario: dict[str, Any], binary: Path, logs: Path) -> dict[str, Any]:
    directory = logs / scenario["name"].replace(" ", "_")
    path = write_config(directory, config(scenario, binary, directory))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gateway", "serve", "--config", path, "--port", str(port)]
    with Processes(directory) as procs:
        proc = procs.spawn("turnout", argv, cwd=ROOT)
        wait_ready(proc, url + "/health", timeout=60)
        async with aiohttp.ClientSession() as session:
            estimates: dict[str, int] = {}
            planned: dict[str, int] = {}
            for _ in range(100):
                async with session.get(url + "/engine/status") as response:
                    engines = (await response.json())["engines"]
                estimates = {n: e["memory"]["estimated_mb"] for n, e in engines.items()}
                # What the planner counts for each role before any has loaded.
                planned = {n: e["memory"]["need_mb"] for n, e in engines.items()}
                if all(estimates.values()):
                    break
                await asyncio.sleep(0.05)
            for role in [*scenario["load"], scenario["then"]]:
                body = {"model": role, "messages": USER, "max_tokens": 4}
                async with session.post(url + "/v1/chat/completions", json=body) as response:
                    await response.read()
                await memory_of(session, url, role)
            after = await states(session, url)
            memories = {role: await memory_of(session, url, role) for role in scenario["roles"]}
    evicted = [r for r, s in after.items() if s == "stopped"]
    then = scenario["then"]
    short = estimates[then] - (scenario["budget_mb"] - sum(estimates[r] for r in scenario["load"]))
    # The same choice (turnout's own function) made on the estimates: what measuring changed.
    on_estimates = cheapest_evictions(
        short,
        [Candidate(r, estimates[r], memories[r]["load_seconds"] or 0.0) for r in scenario["load"]],
    )
    return {
        "scenario": scenario["name"],
        "budget_mb": scenario["budget_mb"],
        "loaded_in_order": [*scenario["load"], scenario["then"]],
        "roles": {
            role: {
                "estimated_mb": estimates[role],
                "planned_before_mb": planned[role],
                "measured_mb": memories[role]["measured_mb"],
                "planned_after_mb": memories[role]["need_mb"],
                "load_seconds": memories[role]["load_seconds"],
            }
            for role in scenario["roles"]
        },
        "evicted": evicted,
        "expected": scenario["expected"],
        "right": evicted == [scenario["expected"]],
        # After its first load, the planner counts each role at its measured size.
        "measured_replaces_estimate": all(
            memories[role]["measured_mb"]
            and memories[role]["need_mb"] == memories[role]["measured_mb"]
            and planned[role] == estimates[role]
            for role in scenario["roles"]
        ),
        "why": reason(directory / "turnout.log", scenario["then"]),
        "on_estimates_would_evict": on_estimates,
    }


def show(result: dict[str, Any]) -> str:
    lines = [
        f"{result['scenario']}: budget {result['budget_mb']} MB, loaded "
        + " -> ".join(result["loaded_in_order"]),
        f"  {'role':8}{'estimated MB':>14}{'planned before':>16}{'measured MB':>13}"
        f"{'planned after':>15}{'load s':>9}",
    ]
    for role, r in result["roles"].items():
        load = r["load_seconds"]
        lines.append(
            f"  {role:8}{r['estimated_mb']!s:>14}{r['planned_before_mb']!s:>16}"
            f"{r['measured_mb']!s:>13}{r['planned_after_mb']!s:>15}"
            f"{(f'{load:.3f}' if load is not None else '-'):>9}"
        )
    verdict = "right" if result["right"] else f"WRONG (expected {result['expected']})"
    lines.append(f"  evicted: {', '.join(result['evicted']) or 'none'} ({verdict})")
    replaced = "yes" if result["measured_replaces_estimate"] else "NO"
    lines.append(f"  planner counts the measured size after the first load: {replaced}")
    lines.append(f"  why: {result['why']}")
    would = result["on_estimates_would_evict"]
    lines.append(
        "  planned on the estimates instead, it would evict: "
        + (", ".join(would) if would else "nothing" if would == [] else "(nothing frees enough)")
    )
    return "\n".join(lines)


async def main() -> list[dict[str, Any]]:
    binary = llama_server_binary()
    if binary is None:
        raise SystemExit("llama-server missing: run tests/engines/build_llama_server.sh")
    models = ensure_models()
    logs = RESULTS / "logs" / "eviction"
    results = []
    for scenario in scenarios(models):
        result = await run(scenario, binary, logs)
        print(show(result), flush=True)
        results.append(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eviction-latest.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    asyncio.run(main())
