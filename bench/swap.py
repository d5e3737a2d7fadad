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

Before/after in the same run: ``--before DIR`` names another checkout of turnout (say the
commit before the spawn and health-polling work, ``git archive 823d0e3 | tar -x -C DIR``); its
gateway serves the same roles beside this one, and every round measures the direct cold start,
this turnout's swap and the other's, in turns, so a noisy machine weighs on all alike.

    .venv/bin/python -m bench.swap [--rounds 8] [--before DIR]
    .venv/bin/python -m bench.swap --rounds 1 --load-swaps 2 --clients 4 --ttft-rounds 2  # short
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
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
    ("turnout_cpu", "CPU turnout used meanwhile (not a stage)"),
)


def engine_command(binary: Path) -> list[str]:
    """The registered llamacpp kind's command, run by this binary with four slots on one thread."""
    return [str(binary), *LLAMACPP_COMMAND[1:], "-np", "4", "-t", "1"]


def direct_first_token(port: int) -> float:
    """Seconds to the first token of a streaming request sent straight to the engine."""
    body = json.dumps({"messages": USER, "max_tokens": 16, "stream": True}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        for line in response:
            if line.startswith(b"data: {") and b'"choices"' in line:
                first = time.perf_counter() - started
                response.read()
                return first
    raise RuntimeError("the engine streamed no token")


def direct_cold_start(binary: Path, model: Path) -> dict[str, float]:
    """Seconds from spawn to the first HTTP answer and to the first 200 on /health; then to
    the first token of a streaming request (``first_token``, not part of ``total``)."""
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
                            "first_token": direct_first_token(port),
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

    def __init__(self, roles: dict[str, Any], root: Path = ROOT) -> None:
        self.root = root
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
            cwd=self.root,
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

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

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


def cpu_seconds(pid: int) -> float:
    """The CPU time ``pid`` itself has used (its engines' not counted), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def one_swap(
    session: aiohttp.ClientSession, target: Target, old: str, new: str, sequential: bool
) -> dict[str, float]:
    """Swap ``old`` out and ``new`` in; ``sequential``: ``old`` unloaded first."""
    cpu = cpu_seconds(target.pid)
    sent = time.time()
    if sequential:
        async with session.post(f"{target.url}/engine/unload?role={old}") as response:
            await response.read()
    await switch(session, target.url, new)
    answered = time.time()
    used = cpu_seconds(target.pid) - cpu
    await target.log.settled(old, sent)
    # turnout's CPU during the swap: on a busy machine, time the loading engine did not get.
    return {**swap_stages(target.log.events, old, new, sent, answered), "turnout_cpu": used}


@dataclass
class Target:
    """One turnout under test: this checkout's, or the one ``--before`` names."""

    name: str
    url: str
    pid: int
    log: EventLog
    loaded: str = "b"
    swaps: list[dict[str, float]] = field(default_factory=list)
    sequential: list[dict[str, float]] = field(default_factory=list)
    mid_swap: list[dict[str, float]] = field(default_factory=list)


async def paired_swaps(
    session: aiohttp.ClientSession,
    targets: list[Target],
    rounds: int,
    cold_start: Callable[[], dict[str, float]],
) -> list[dict[str, float]]:
    """Direct cold starts and each turnout's swaps and sequential swaps in turns, so that a
    noisy machine weighs on all alike: the direct cold starts (the swaps land in ``targets``)."""
    direct: list[dict[str, float]] = []
    for target in targets:
        await switch(session, target.url, "b")
    for i in range(2 * rounds):
        direct.append(cold_start())
        for target in targets:
            old = target.loaded
            new = "a" if old == "b" else "b"
            measured = target.sequential if i % 2 else target.swaps
            measured.append(await one_swap(session, target, old, new, sequential=bool(i % 2)))
            target.loaded = new
    return direct


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


async def ttft(session: aiohttp.ClientSession, url: str, role: str) -> tuple[float, float]:
    """(when the request was sent, when its first token came), wall-clock seconds."""
    body = {"model": role, "messages": USER, "max_tokens": 16, "stream": True}
    sent = time.time()
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {") and b'"choices"' in line:
                first = time.time()
                await response.read()
                return sent, first
            if line.startswith(b"data: {"):
                raise RuntimeError(f"no token: {line.decode(errors='replace').strip()}")
        raise RuntimeError(f"no token: HTTP {response.status}")


async def mid_swap(session: aiohttp.ClientSession, target: Target, role: str) -> dict[str, float]:
    """A streaming request for ``role`` sent just after turnout began swapping it in: its time
    to first token, cut at the role's ``ready`` event; then the same request once loaded."""
    other = "a" if role == "b" else "b"
    await switch(session, target.url, other)
    async with session.post(f"{target.url}/engine/switch/{role}") as response:
        await response.read()
    sent, first = await ttft(session, target.url, role)
    warm_sent, warm_first = await ttft(session, target.url, role)
    # Looked up after the second request: the event may reach the bench after the token did.
    ready = next(
        (
            e["at"]
            for e in target.log.events
            if e["at"] >= sent and e["role"] == role and e["state"] == "ready"
        ),
        first,
    )
    target.loaded = role
    return {
        "to_ready": ready - sent,
        "ready_to_first_token": first - ready,
        "total": first - sent,
        "warm": warm_first - warm_sent,
    }


async def ttft_rounds(
    session: aiohttp.ClientSession,
    targets: list[Target],
    rounds: int,
    cold_start: Callable[[], dict[str, float]],
) -> list[dict[str, float]]:
    """Per round, a direct cold start then its first token, and a request arriving mid-swap
    through each turnout: the direct rounds, as ``mid_swap``'s keys (``targets`` get theirs)."""
    direct: list[dict[str, float]] = []
    for i in range(rounds):
        cold = cold_start()
        direct.append(
            {
                "to_ready": cold["total"],
                "ready_to_first_token": cold["first_token"],
                "total": cold["total"] + cold["first_token"],
                "warm": cold["first_token"],
            }
        )
        for target in targets:
            target.mid_swap.append(await mid_swap(session, target, "a" if i % 2 else "b"))
    return direct


# The stages that are turnout's own work, not the engine's: the rest of a swap is the engine
# loading, whose time swings by hundreds of ms with what else runs on the machine.
OWN_STAGES = ("admission", "stop_to_start", "spawn_to_listening", "ready_to_answer")


def own_stages(swap: dict[str, float], direct: dict[str, float]) -> float:
    """What turnout's own stages add to the direct cold start's (its spawn to listening)."""
    return sum(swap[k] for k in OWN_STAGES) - direct["spawn_to_listening"]


def medians_ms(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rounds) * 1000, 1) for k in rounds[0]}


def role_config(binary: Path, model: Path) -> dict[str, Any]:
    return {"engine": "llamacpp", "model": str(model), "command": engine_command(binary)}


async def measure(
    targets: list[Target], args: argparse.Namespace, cold_start: Callable[[], dict[str, float]]
) -> dict[str, Any]:
    # Idle connections dropped before turnout drops them: a direct cold start blocks this loop
    # for a second or more between two requests.
    connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_SECONDS / 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        followers = [asyncio.create_task(t.log.follow(session, t.url)) for t in targets]
        cold = await paired_swaps(session, targets, args.rounds, cold_start)
        load = await under_load(session, targets[0].url, args.load_swaps, args.clients)
        first = await ttft_rounds(session, targets, args.ttft_rounds, cold_start)
        for follower in followers:
            follower.cancel()
    direct = medians_ms(cold)
    stages = {"direct": direct}
    overhead: dict[str, float] = {}
    own: dict[str, float] = {}
    ttfts = {"direct": medians_ms(first)}
    for t in targets:
        suffix = "" if t.name == "now" else f" ({t.name})"
        stages["swap" + suffix] = medians_ms(t.swaps)
        stages["seq." + suffix] = medians_ms(t.sequential)
        overhead["swap" + suffix] = round(stages["swap" + suffix]["total"] - direct["total"], 1)
        overhead["seq." + suffix] = round(stages["seq." + suffix]["total"] - direct["total"], 1)
        for case in ("swap" + suffix, "seq." + suffix):
            own[case] = round(own_stages(stages[case], direct), 1)
        ttfts["mid-swap" + suffix] = medians_ms(t.mid_swap)
    now = targets[0]
    return {
        "rounds": args.rounds,
        "direct_cold_start_ms": direct["total"],
        "swap_via_turnout_ms": stages["swap"]["total"],
        "swap_overhead_ms": overhead["swap"],
        "swap_sequential_ms": stages["seq."]["total"],
        "swap_overhead_sequential_ms": overhead["seq."],
        "swap_overhead_target_ms": TARGET_MS,
        "stages_ms": stages,
        "overhead_ms": overhead,
        "own_stages_ms": own,
        "overlapped_swaps": f"{sum(r['overlapped'] for r in now.swaps):.0f}/{len(now.swaps)}",
        "under_load": load,
        "ttft_ms": ttfts,
        "ttft_during_swap_ms": ttfts["mid-swap"]["total"],
        "ttft_warm_ms": ttfts["mid-swap"]["warm"],
        "ttft_during_swap_over_cold_start_ms": round(
            ttfts["mid-swap"]["total"] - ttfts["direct"]["total"], 1
        ),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    binary = llama_server_binary()
    if binary is None:
        raise SystemExit("llama-server not built: bash tests/engines/build_llama_server.sh")
    model = ensure_models()["tiny-hello"]
    roles = {name: role_config(binary, model) for name in ("a", "b")}
    with contextlib.ExitStack() as stack:
        now = stack.enter_context(Turnout(roles))
        targets = [Target("now", now.url, now.pid, EventLog())]
        if args.before is not None:
            before = stack.enter_context(Turnout(roles, root=args.before))
            targets.append(Target("before", before.url, before.pid, EventLog()))
        return await measure(targets, args, lambda: direct_cold_start(binary, model))


def columns(block: dict[str, dict[str, float]], rows: tuple[tuple[str, str], ...]) -> list[str]:
    names = list(block)
    width = max(9, *(len(n) + 1 for n in names))
    lines = [f"{'median ms':22}" + "".join(f"{n:>{width}}" for n in names) + "  covers"]
    for key, what in rows:
        cells = "".join(
            f"{block[n][key]:{width}.1f}" if key in block[n] else " " * width for n in names
        )
        lines.append(f"{key:22}{cells}  {what}")
    return lines


TTFT_ROWS = (
    ("to_ready", "request sent -> role ready (direct: spawn -> healthy)"),
    ("ready_to_first_token", "ready -> first token"),
    ("total", "time to first token"),
    ("warm", "the same request, role loaded"),
)


def table(result: dict[str, Any]) -> str:
    """The per-stage medians side by side, for people (the JSON has the same numbers)."""
    stages = result["stages_ms"]
    width = max(9, *(len(n) + 1 for n in stages))
    overhead = result["overhead_ms"]
    lines = [
        f"swap stages, {result['rounds']} round(s) of each:",
        *columns(stages, STAGES),
        f"{'overhead vs direct':22}{'':{width}}"
        + "".join(f"{overhead[n]:{width}.1f}" for n in list(stages)[1:])
        + f"  target <= {TARGET_MS} ms",
        f"{'of it turnout stages':22}{'':{width}}"
        + "".join(f"{result['own_stages_ms'][n]:{width}.1f}" for n in list(stages)[1:])
        + "  admission + stop_to_start + spawn_to_listening + ready_to_answer - direct's",
        f"swap: new engine started while the old one exited in {result['overlapped_swaps']} swaps;"
        " seq.: unload, then switch (both not fitting in memory together)",
        "",
        "a streaming request arriving mid-swap, next to a direct cold start and its first token:",
        *columns(result["ttft_ms"], TTFT_ROWS),
        f"mid-swap over direct: {result['ttft_during_swap_over_cold_start_ms']:+.1f} ms",
        "",
        "under load: {swaps} swaps with {clients} clients: {served} served, {failures} failed "
        "in {seconds} s".format(**result["under_load"]),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8, help="swaps and sequential swaps each")
    parser.add_argument("--load-swaps", type=int, default=10, help="swaps under load")
    parser.add_argument("--clients", type=int, default=16, help="clients during those swaps")
    parser.add_argument("--ttft-rounds", type=int, default=6, help="requests arriving mid-swap")
    parser.add_argument(
        "--before", type=Path, default=None, help="another turnout checkout to compare with"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
