"""What a front -> peer hop adds per request (issue 17): latency at one connection, p50.

    .venv/bin/python -m bench.peer_hop [--seconds 5] [--rounds 5]

Processes, each its own: the fast fake upstream; the peer, a turnout serving model ``bench``
from that upstream (the shipped defaults); and four ways to reach the peer, each loaded by wrk
with one connection (so latency is the whole answer, no queueing), in turn, for ``--rounds``
rounds (the order rotates every round), with the ~2 KB chat request and the 20-chunk stream:

  direct       the peer itself
  raw hop      the minimal raw-ASGI + aiohttp proxy (bench/mini_proxy.py) in front of the peer:
               what any extra network hop through a Python proxy costs on this machine
  front        a turnout with the peer as a plain OpenAI-compatible provider
  front-peers  a turnout with the peer under ``peers:`` (its role found, ranked per request,
               its failures classified, the hop header sent): the setup being measured

Reported per kind, as medians over rounds of each stack's p50: what ``front-peers`` adds over
``direct`` (the hop as a client sees it), over ``raw hop`` (beyond the raw network hop: the
target, <= 0.5 ms), and over ``front`` (the peer routing alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import wrk
from bench.cells import NOISY, log, write_scripts
from bench.procs import Processes, wait_quiet
from bench.report import RESULTS, machine
from bench.runner import run_benchmark
from bench.stacks import (
    Stack,
    start_mini_proxy,
    start_turnout,
    start_upstream,
    turnout_config,
    working_tree_build,
)

KINDS = ("json", "stream")
STACKS = ("direct", "raw hop", "front", "front-peers")
TARGET_MS = 0.5


def front_config(peer: Stack, peered: bool, database: Path) -> str:
    server = f"server:\n  log_level: warning\n  database: {database}\n"
    if peered:
        peers = f"peers:\n  box:\n    url: {peer.origin}\n    roles: [{peer.model}]\n"
        return f"{server}routing:\n  retries: 0\n{peers}"
    return f"""\
{server}routing:
  retries: 0
providers:
  box: {{kind: openai-compatible, base_url: "{peer.origin}/v1", local: true}}
models:
  - name: {peer.model}
    targets:
      - {{provider: box, model: {peer.model}}}
"""


def start_stacks(procs: Processes, work: Path) -> dict[str, Stack]:
    build = working_tree_build()
    upstream = start_upstream(procs)
    # Each turnout its own database: three usage writers on one SQLite file would contend.
    (work / "peer.yaml").write_text(turnout_config(upstream, work / "peer.db"))
    peer = start_turnout(procs, build, upstream, work, "peer", work / "peer.yaml")
    raw = start_mini_proxy(procs, "asgi-aiohttp", peer)
    raw.model = peer.model
    stacks = {"direct": peer, "raw hop": raw}
    for name, peered in (("front", False), ("front-peers", True)):
        path = work / f"{name}.yaml"
        path.write_text(front_config(peer, peered, work / f"{name}.db"))
        stacks[name] = start_turnout(procs, build, upstream, work, name, path)
    for name, stack in stacks.items():
        stack.name = name.replace(" ", "-")
    return stacks


def measure(
    stacks: dict[str, Stack], scripts: dict[str, dict[str, Path]], kind: str, args: Any
) -> list[dict[str, float]]:
    rounds = []
    for number in range(args.rounds):
        wait_quiet(30, NOISY)
        order = STACKS[number % len(STACKS) :] + STACKS[: number % len(STACKS)]
        p50 = {}
        for name in order:
            result = wrk.run(stacks[name].chat_url, scripts[name][kind], 1, args.seconds)
            if result.errors:
                log(f"  {name} {kind}: {result.errors} errors {result.error_detail}")
            p50[name] = result.p50_ms
        rounds.append(p50)
        log(f"{kind} round {number + 1}: " + ", ".join(f"{n} {p50[n]:.3f} ms" for n in STACKS))
    return rounds


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with Processes(RESULTS / "logs") as procs:
        stacks = start_stacks(procs, work)
        scripts = {name: write_scripts(stack, work) for name, stack in stacks.items()}
        for kind in KINDS:  # warm: connection pools, caches
            for name in STACKS:
                wrk.run(stacks[name].chat_url, scripts[name][kind], 1, min(2.0, args.seconds))
        for kind in KINDS:
            rounds = measure(stacks, scripts, kind, args)
            p50 = {n: round(statistics.median(r[n] for r in rounds), 3) for n in STACKS}
            peered = p50["front-peers"]
            results[kind] = {
                "rounds": rounds,
                "p50_ms": p50,
                "added_over_direct_ms": round(peered - p50["direct"], 3),
                "added_beyond_raw_hop_ms": round(peered - p50["raw hop"], 3),
                "peer_routing_over_plain_front_ms": round(peered - p50["front"], 3),
            }
    return {
        "machine": machine(),
        "settings": vars(args),
        "kinds": results,
        "targets": {
            f"added_beyond_raw_hop_at_most_{TARGET_MS}_ms": all(
                r["added_beyond_raw_hop_ms"] <= TARGET_MS for r in results.values()
            )
        },
    }


def report(result: dict[str, Any]) -> str:
    lines = []
    for kind, r in result["kinds"].items():
        p50 = ", ".join(f"{n} {v:.3f}" for n, v in r["p50_ms"].items())
        lines.append(f"{kind}@1 p50 ms: {p50}")
        lines.append(
            f"{kind}@1 front-peers adds {r['added_over_direct_ms']:.3f} ms over direct, "
            f"{r['added_beyond_raw_hop_ms']:.3f} ms beyond the raw hop (target <= {TARGET_MS}), "
            f"{r['peer_routing_over_plain_front_ms']:.3f} ms over a plain front"
        )
    lines.append("targets: " + json.dumps(result["targets"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per kind")
    args = parser.parse_args()
    return run_benchmark("peer_hop", args, run, report)


if __name__ == "__main__":
    sys.exit(main())
