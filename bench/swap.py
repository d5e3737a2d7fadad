"""Hot-swap benchmark (issue 3): what turnout adds on top of an engine's own cold start.

In one run, with real llama-server processes on tiny models:
1. cold start measured directly: spawn llama-server, poll /health until 200 (median of N);
2. swap through turnout: POST /engine/switch/<role>?wait=true, alternating two roles, so each
   swap stops one engine and starts the other; overhead = swap time - direct cold start;
3. 10 back-to-back swaps while 16 clients send requests for both roles: failures must be 0;
4. time to first token of a streaming request that arrives while its role is being swapped in,
   next to the same request with the role already loaded.

    .venv/bin/python -m bench.swap [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.engines.builtin import LLAMACPP_COMMAND  # noqa: E402
from tests.engines.engines import ensure_models, free_port, llama_server_binary  # noqa: E402

USER = [{"role": "user", "content": "hi"}]


def engine_command(binary: Path) -> list[str]:
    """The registered llamacpp kind's command, run by this binary with four slots on one thread."""
    return [str(binary), *LLAMACPP_COMMAND[1:], "-np", "4", "-t", "1"]


def direct_cold_start(binary: Path, model: Path) -> float:
    """Seconds from spawn to the first 200 on /health, the way turnout's driver polls it."""
    import urllib.request

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
    try:
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health", timeout=1
                ) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.005)
    finally:
        process.terminate()
        process.wait()


class Turnout:
    def __init__(self, roles: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "roles": roles,
            "engines": {"max_wait_seconds": 1, "wait_timeout_seconds": 120},
            "server": {"log_level": "warning", "keepalive_seconds": 1},
        }
        self._file = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(config, self._file)
        self._file.close()
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Turnout:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                self._file.name,
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import urllib.request

        for _ in range(200):
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
        os.unlink(self._file.name)


async def swap_times(session: aiohttp.ClientSession, url: str, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        role = "a" if i % 2 else "b"
        started = time.perf_counter()
        async with session.post(f"{url}/engine/switch/{role}?wait=true") as response:
            body = await response.json()
            assert body["status"] == "ready", body
        times.append(time.perf_counter() - started)
    return times


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
            if line.startswith(b"data: {"):
                first = time.perf_counter() - started
                await response.read()
                return first
    raise RuntimeError("no token")


async def ttft_during_swap(
    session: aiohttp.ClientSession, url: str, rounds: int
) -> dict[str, float]:
    during, warm = [], []
    for i in range(rounds):
        target, other = ("a", "b") if i % 2 else ("b", "a")
        async with session.post(f"{url}/engine/switch/{other}?wait=true") as response:
            await response.read()
        # The request arrives while turnout is swapping `target` in.
        async with session.post(f"{url}/engine/switch/{target}") as response:
            await response.read()
        during.append(await ttft(session, url, target))
        warm.append(await ttft(session, url, target))
    return {
        "ttft_during_swap_ms": statistics.median(during) * 1000,
        "ttft_warm_ms": statistics.median(warm) * 1000,
    }


async def run(rounds: int) -> dict[str, Any]:
    binary = llama_server_binary()
    if binary is None:
        raise SystemExit("llama-server not built: bash tests/engines/build_llama_server.sh")
    models = ensure_models()
    cold = [direct_cold_start(binary, models["tiny-hello"]) for _ in range(rounds)]

    def roles(memory_mb: int) -> dict[str, Any]:
        return {
            name: {
                "engine": "llamacpp",
                "model": str(models["tiny-hello"]),
                "command": engine_command(binary),
                "memory_mb": memory_mb,
            }
            for name in ("a", "b")
        }

    # Without a memory estimate turnout must wait for the old engine to exit before starting
    # the new one; with one that fits, it starts the new one while the old one exits.
    with Turnout(roles(0)) as turnout:
        async with aiohttp.ClientSession() as session:
            swaps = (await swap_times(session, turnout.url, rounds + 1))[1:]  # first: a load
            load = await under_load(session, turnout.url, swaps=10, clients=16)
            first_token = await ttft_during_swap(session, turnout.url, min(rounds, 6))
    with Turnout(roles(64)) as turnout:
        async with aiohttp.ClientSession() as session:
            overlapped = (await swap_times(session, turnout.url, rounds + 1))[1:]
    cold_ms = statistics.median(cold) * 1000
    swap_ms = statistics.median(swaps) * 1000
    overlapped_ms = statistics.median(overlapped) * 1000
    return {
        "direct_cold_start_ms": round(cold_ms, 1),
        "swap_via_turnout_ms": round(swap_ms, 1),
        "swap_overhead_ms": round(swap_ms - cold_ms, 1),
        "swap_with_memory_estimate_ms": round(overlapped_ms, 1),
        "swap_overhead_with_memory_estimate_ms": round(overlapped_ms - cold_ms, 1),
        "swap_overhead_target_ms": 100,
        "under_load": load,
        **{k: round(v, 1) for k, v in first_token.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.rounds))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
