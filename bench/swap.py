"""Hot-swap benchmark (issues 3 and 14): what turnout adds on top of an engine's own cold start.

In one run, with real llama-server processes on tiny models:
1. cold start measured directly: spawn llama-server, poll /health until 200 (median of N), split
   into spawn → listening (its first HTTP answer, 503 while it loads) and listening → healthy;
2. swap through turnout: POST /engine/switch/<role>?wait=true, alternating two roles, so each
   swap stops one engine and starts the other. Both fit in memory, so the new engine starts
   while the old one exits (the default whenever a role's size, estimated or measured, fits);
3. a sequential swap: POST /engine/unload?role=<old>, then the switch: what a swap costs when
   the two engines do not fit in memory together and the new one must wait for the old one;
4. 10 back-to-back swaps while 16 clients send requests for both roles: failures must be 0;
5. time to first token of a streaming request that arrives while its role is being swapped in,
   next to the same request with the role already loaded.

Each swap is cut into stages from turnout's own engine events (GET /engine/events, each with
its wall-clock time; the bench and the gateway share the clock): admission (the request until
the first stop or start), stopping the old engine (KV cache save, SIGTERM, exit), spawn until
the engine answers HTTP, its loading until /health says 200, restoring the KV cache, and ready
until the client has its answer. Overhead = swap - direct cold start (target: <= 100 ms).
Memory is measured after ready, off the swap path (``sizing.measure``): it is no stage.

    .venv/bin/python -m bench.swap [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.engines.builtin import LLAMACPP_COMMAND  # noqa: E402
from tests.engines.engines import ensure_models, free_port, llama_server_binary  # noqa: E402

USER = [{"role": "user", "content": "hi"}]
TARGET_MS = 100
# turnout's keep-alive; the bench's client lets go of idle connections in half the time.
KEEPALIVE_SECONDS = 4.0

# (key, what it covers), in swap order; each a median over the rounds, in ms.
STAGES = (
    ("admission", "request -> first stop or start decided"),
    ("stop_old", "old engine: KV save, SIGTERM, exit"),
    ("stop_to_start", "old engine gone -> new one spawned"),
    ("spawn_to_listening", "spawn -> first HTTP answer"),
    ("listening_to_healthy", "engine loads; /health polled"),
    ("restore_cache", "KV cache restored"),
    ("ready_to_answer", "ready -> client has the answer"),
    ("total", "request -> answer"),
)


def engine_command(binary: Path) -> list[str]:
    """The registered llamacpp kind's command, run by this binary with four slots on one thread."""
    return [str(binary), *LLAMACPP_COMMAND[1:], "-np", "4", "-t", "1"]


def direct_cold_start(binary: Path, model: Path) -> dict[str, float]:
    """Seconds from spawn to the first HTTP answer and to the first 200 on /health."""
    port = free_port()
    command = [
        c.replace("${MODEL}", str(model))
        .replace("${HOST}", "127.0.0.1")
        .replace("${PORT}", str(port))
        .replace("${CTX}", "4096")
        .replace("${ROLE}", "direct")
        for c in engine_command(binary)
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listening: float | None = None
    try:
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health", timeout=1
                ) as response:
                    if response.status == 200:
                        healthy = time.perf_counter() - started
                        listening = healthy if listening is None else listening
                        return {
                            "spawn_to_listening": listening,
                            "listening_to_healthy": healthy - listening,
                            "total": healthy,
                        }
            except urllib.error.HTTPError:
                if listening is None:
                    listening = time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.005)
    finally:
        process.terminate()
        process.wait()


class Turnout:
    """turnout serving two roles, with a database and KV cache directory of its own (the
    repository's turnout.db would bring back sizes measured by earlier runs)."""

    def __init__(self, roles: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.mkdtemp(prefix="turnout-bench-swap-")
        config = {
            "roles": roles,
            "engines": {
                "max_wait_seconds": 1,
                "wait_timeout_seconds": 120,
                "kv_cache": {"dir": os.path.join(self._dir, "kv")},
                "log_dir": os.path.join(self._dir, "logs"),
            },
            "server": {
                "log_level": "warning",
                "keepalive_seconds": KEEPALIVE_SECONDS,
                "database": os.path.join(self._dir, "turnout.db"),
            },
        }
        self._file = os.path.join(self._dir, "routing.yaml")
        with open(self._file, "w") as out:
            yaml.safe_dump(config, out)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Turnout:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                self._file,
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(600):
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("turnout did not start")

    def __exit__(self, *_: object) -> None:
        assert self._process is not None
        self._process.terminate()
        self._process.wait(30)
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class EventLog:
    """Every engine event turnout publishes, read from GET /engine/events as it happens."""

    events: list[dict[str, Any]] = field(default_factory=list)

    async def follow(self, session: aiohttp.ClientSession, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with session.get(url + "/engine/events", timeout=timeout) as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))

    async def settled(self, role: str, since: float) -> None:
        """Until ``role`` has been reported stopped after ``since`` (its stop ran beside the
        start, so it may end after the swap was answered)."""
        for _ in range(500):
            if any(
                e["role"] == role and e["state"] == "stopped" and e["at"] >= since
                for e in self.events
            ):
                return
            await asyncio.sleep(0.01)


def swap_stages(
    events: list[dict[str, Any]], old: str, new: str, sent: float, answered: float
) -> dict[str, float]:
    """One swap cut into stages, in seconds, from the events published since ``sent``."""
    mine = [e for e in events if e["at"] >= sent]

    def first(role: str, key: str, value: str) -> float | None:
        return next((e["at"] for e in mine if e["role"] == role and e[key] == value), None)

    stop0, stop1 = first(old, "state", "stopping"), first(old, "state", "stopped")
    start, ready = first(new, "state", "starting"), first(new, "state", "ready")
    assert start is not None and ready is not None and stop0 is not None and stop1 is not None
    listening = first(new, "stage", "loading") or ready
    restore = first(new, "stage", "restoring cache") or ready
    return {
        "admission": min(start, stop0) - sent,
        "stop_old": stop1 - stop0,
        "stop_to_start": max(0.0, start - stop1),
        "spawn_to_listening": listening - start,
        "listening_to_healthy": restore - listening,
        "restore_cache": ready - restore,
        "ready_to_answer": answered - ready,
        "total": answered - sent,
        "overlapped": 1.0 if start < stop1 else 0.0,
    }


async def switch(session: aiohttp.ClientSession, url: str, role: str) -> None:
    async with session.post(f"{url}/engine/switch/{role}?wait=true") as response:
        body = await response.json()
        assert body["status"] == "ready", body


async def one_swap(
    session: aiohttp.ClientSession, url: str, log: EventLog, old: str, new: str, sequential: bool
) -> dict[str, float]:
    """Swap ``old`` out and ``new`` in; ``sequential``: ``old`` unloaded first."""
    sent = time.time()
    if sequential:
        async with session.post(f"{url}/engine/unload?role={old}") as response:
            await response.read()
    await switch(session, url, new)
    answered = time.time()
    await log.settled(old, sent)
    return swap_stages(log.events, old, new, sent, answered)


async def paired_swaps(
    session: aiohttp.ClientSession,
    url: str,
    log: EventLog,
    rounds: int,
    cold_start: Callable[[], dict[str, float]],
) -> tuple[list[dict[str, float]], list[dict[str, float]], list[dict[str, float]]]:
    """Direct cold starts, swaps and sequential swaps in turns, so that a noisy machine weighs
    on all three alike: (direct, swap, sequential)."""
    direct: list[dict[str, float]] = []
    overlapped: list[dict[str, float]] = []
    sequential: list[dict[str, float]] = []
    await switch(session, url, "b")
    loaded = "b"
    for i in range(2 * rounds):
        direct.append(cold_start())
        other = "a" if loaded == "b" else "b"
        measured = sequential if i % 2 else overlapped
        measured.append(await one_swap(session, url, log, loaded, other, sequential=bool(i % 2)))
        loaded = other
    return direct, overlapped, sequential


async def under_load(
    session: aiohttp.ClientSession, url: str, swaps: int, clients: int
) -> dict[str, Any]:
    failures: list[str] = []
    served = 0
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal served
        i = 0
        while not stop.is_set():
            model = "a" if (n + i) % 2 else "b"
            i += 1
            body = {"model": model, "messages": USER, "max_tokens": 16}
            try:
                async with session.post(url + "/v1/chat/completions", json=body) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"{response.status}")
                    else:
                        served += 1
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    async def switcher() -> None:
        for i in range(swaps):
            async with session.post(
                f"{url}/engine/switch/{'a' if i % 2 else 'b'}?wait=true"
            ) as response:
                await response.read()
        stop.set()

    started = time.perf_counter()
    await asyncio.gather(switcher(), *(client(n) for n in range(clients)))
    return {
        "swaps": swaps,
        "clients": clients,
        "served": served,
        "failures": len(failures),
        "seconds": round(time.perf_counter() - started, 2),
    }


async def ttft(session: aiohttp.ClientSession, url: str, role: str) -> float:
    body = {"model": role, "messages": USER, "max_tokens": 16, "stream": True}
    started = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {") and b'"choices"' in line:
                first = time.perf_counter() - started
                await response.read()
                return first
            if line.startswith(b"data: {"):
                raise RuntimeError(f"no token: {line.decode(errors='replace').strip()}")
        raise RuntimeError(f"no token: HTTP {response.status}")


async def ttft_during_swap(session: aiohttp.ClientSession, url: str, rounds: int) -> dict[str, Any]:
    during, warm, failures = [], [], []
    for i in range(rounds):
        target, other = ("a", "b") if i % 2 else ("b", "a")
        async with session.post(f"{url}/engine/switch/{other}?wait=true") as response:
            await response.read()
        # The request arrives while turnout is swapping `target` in.
        async with session.post(f"{url}/engine/switch/{target}") as response:
            await response.read()
        try:
            during.append(await ttft(session, url, target))
            warm.append(await ttft(session, url, target))
        except RuntimeError as exc:
            failures.append(str(exc))
    if not during or not warm:
        nan = float("nan")
        return {"ttft_during_swap_ms": nan, "ttft_warm_ms": nan, "ttft_failures": failures}
    return {
        "ttft_during_swap_ms": round(statistics.median(during) * 1000, 1),
        "ttft_warm_ms": round(statistics.median(warm) * 1000, 1),
        "ttft_failures": failures,
    }


def medians_ms(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rounds) * 1000, 1) for k in rounds[0]}


async def run(rounds: int) -> dict[str, Any]:
    binary = llama_server_binary()
    if binary is None:
        raise SystemExit("llama-server not built: bash tests/engines/build_llama_server.sh")
    models = ensure_models()
    roles = {
        name: {
            "engine": "llamacpp",
            "model": str(models["tiny-hello"]),
            "command": engine_command(binary),
        }
        for name in ("a", "b")
    }
    log = EventLog()
    with Turnout(roles) as turnout:
        # Idle connections dropped before turnout drops them: a direct cold start blocks this
        # loop for a second or more between two requests.
        connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_SECONDS / 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            follower = asyncio.create_task(log.follow(session, turnout.url))
            cold, overlapped, sequential = await paired_swaps(
                session,
                turnout.url,
                log,
                rounds,
                lambda: direct_cold_start(binary, models["tiny-hello"]),
            )
            load = await under_load(session, turnout.url, swaps=10, clients=16)
            first_token = await ttft_during_swap(session, turnout.url, min(rounds, 6))
            follower.cancel()
    direct = {k: round(statistics.median(c[k] for c in cold) * 1000, 1) for k in cold[0]}
    swap, seq = medians_ms(overlapped), medians_ms(sequential)
    return {
        "direct_cold_start_ms": direct["total"],
        "swap_via_turnout_ms": swap["total"],
        "swap_overhead_ms": round(swap["total"] - direct["total"], 1),
        "swap_sequential_ms": seq["total"],
        "swap_overhead_sequential_ms": round(seq["total"] - direct["total"], 1),
        "swap_overhead_target_ms": TARGET_MS,
        "stages_ms": {"direct": direct, "swap": swap, "sequential": seq},
        "overlapped_swaps": f"{sum(r['overlapped'] for r in overlapped):.0f}/{len(overlapped)}",
        "under_load": load,
        **first_token,
        "ttft_during_swap_over_cold_start_ms": round(
            first_token["ttft_during_swap_ms"] - direct["total"], 1
        ),
    }


def table(result: dict[str, Any]) -> str:
    """The per-stage medians side by side, for people (the JSON has the same numbers)."""
    stages = result["stages_ms"]

    def cell(case: str, key: str) -> str:
        return f"{stages[case][key]:8.1f}" if key in stages[case] else f"{'':8}"

    lines = [
        f"{'stage (median ms)':22} {'direct':>8} {'swap':>8} {'seq.':>8}  covers",
        *(
            f"{key:22} {cell('direct', key)} {cell('swap', key)} {cell('sequential', key)}  {what}"
            for key, what in STAGES
        ),
        f"{'overhead vs direct':22} {'':8} {result['swap_overhead_ms']:8.1f} "
        f"{result['swap_overhead_sequential_ms']:8.1f}  target <= {TARGET_MS} ms",
        f"swap: new engine started while the old one exited in {result['overlapped_swaps']} swaps;"
        " seq.: unload, then switch (both not fitting in memory together)",
        f"first token of a request arriving mid-swap: {result['ttft_during_swap_ms']:.1f} ms "
        f"({result['ttft_during_swap_over_cold_start_ms']:+.1f} over a direct cold start; "
        f"{result['ttft_warm_ms']:.1f} ms with its role loaded)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
