"""Peers on loopback: a front turnout and peer turnouts supervising real llama-server roles.

The front has no engines of its own: its ``fast`` model is the peers' role. Which peer a
request reaches is read from the front's ``x-turnout-target`` header; what each peer's engines
do, from its own /engine/status. The ordering and classification rules themselves are
unit-tested in ``test_peers_policy.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.engines.engines import llama_server_binary
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway
from tests.test_engines import role

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def front_config(peers: dict[str, str], **failures: str) -> dict[str, Any]:
    """A turnout with no engines: ``fast`` is served by these peers (name -> URL)."""
    return {
        "routing": {"retries": 0},
        "peers": {
            name: {"url": url, "roles": ["fast"], "poll_seconds": 0.5, "failures": failures}
            for name, url in peers.items()
        },
    }


def peer_config(model: Path, **engines: Any) -> dict[str, Any]:
    return {
        "roles": {"fast": role(model)},
        "engines": {"wait_timeout_seconds": 60, **engines},
        "routing": {"retries": 0},
    }


async def call(url: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as session:
        method = session.post if body is not None or "switch" in path else session.get
        async with method(url + path, json=body) as response:
            data = await response.json(content_type=None)
            return response.status, data, dict(response.headers)


async def eventually(check: Callable[[], Any], seconds: float = 15.0) -> Any:
    """``check()``'s first truthy result (awaited), polling until ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def peer_state(front: RunningGateway, peer: str, role_name: str = "fast") -> str | None:
    _, status, _ = await call(front.url, "/engine/status")
    seen = status["peers"][peer]
    if not seen["reachable"]:
        return None
    state: str | None = seen["roles"].get(role_name, {}).get("state")
    return state


@asynccontextmanager
async def peer_process(
    config: dict[str, Any], tmp_path: Path, name: str
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """A turnout in a process of its own (so a test can kill it): its base URL and process."""
    port = free_port()
    scratch = tmp_path / name
    scratch.mkdir()
    config = {**config, "server": {"port": port, "database": str(scratch / "turnout.db")}}
    config["engines"] = {**config.get("engines", {}), "log_dir": str(scratch)}
    path = scratch / "routing.yaml"
    path.write_text(json.dumps(config))
    log = (scratch / "gateway.log").open("wb")
    # Popen returns at once: nothing here waits on the child.
    process = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "TURNOUT_DEBUG": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await eventually(lambda: _answers(url), seconds=30)
        yield url, process
    finally:
        # The whole group: the gateway and the engines it started.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        log.close()


async def _answers(url: str) -> bool:
    try:
        status, _, _ = await call(url, "/engine/health")
    except aiohttp.ClientError:
        return False
    return status in (200, 503)


def slow_llama_server(tmp_path: Path, seconds: float) -> str:
    """A llama-server that takes ``seconds`` longer to start: a load long enough to interrupt."""
    wrapper = tmp_path / "slow" / "llama-server"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nsleep {seconds}\nexec {llama_server_binary()} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return str(wrapper)


async def test_a_request_lands_on_the_peer_that_has_its_role_loaded(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    hello = tiny_models["tiny-hello"]
    async with (
        running_gateway(config_of(peer_config(hello, log_dir=str(tmp_path / "b")))) as b,
        running_gateway(
            config_of(peer_config(hello, log_dir=str(tmp_path / "c"), preload=["fast"]))
        ) as c,
        running_gateway(config_of(front_config({"b": b.url, "c": c.url}))) as front,
    ):
        # b is listed first, but c has the role loaded.
        await eventually(lambda: _is(peer_state(front, "c"), "ready"))
        assert await peer_state(front, "b") == "stopped"
        status, body, headers = await call(front.v1, "/chat/completions", CHAT)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"].startswith("Hello")
        assert headers["x-turnout-target"] == "peer:c/fast"
        # b was never asked to load it.
        _, b_status, _ = await call(b.url, "/engine/status")
        assert b_status["engines"]["fast"]["state"] == "stopped"


async def test_a_swap_on_a_peer_shows_on_the_fronts_status(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    hello = tiny_models["tiny-hello"]
    async with (
        running_gateway(config_of(peer_config(hello, log_dir=str(tmp_path)))) as b,
        running_gateway(config_of(front_config({"b": b.url}))) as front,
    ):
        await eventually(lambda: _is(peer_state(front, "b"), "stopped"))
        _, status, _ = await call(front.url, "/engine/status")
        assert status["peers"]["b"]["following_events"] is True
        status_code, _, _ = await call(b.url, "/engine/switch/fast")
        assert status_code == 202
        # Through b's event stream: well before the front's next status poll would matter.
        await eventually(lambda: _is(peer_state(front, "b"), "ready"))
        # Unload there: the front sees that too.
        async with aiohttp.ClientSession() as session:
            await session.post(b.url + "/engine/unload")
        await eventually(lambda: _is(peer_state(front, "b"), "stopped"))


@pytest.mark.parametrize(("connect", "expected"), [("next", 200), ("fail", 502)])
async def test_killing_a_peer_mid_load_moves_traffic_per_its_failure_class(
    tiny_models: dict[str, Path], tmp_path: Path, connect: str, expected: int
) -> None:
    hello = tiny_models["tiny-hello"]
    slow = peer_config(hello)
    slow["roles"]["fast"]["command"] = [
        slow_llama_server(tmp_path, 30),
        *role(hello)["command"][1:],
    ]
    async with (
        peer_process(slow, tmp_path, "b") as (b_url, b_process),
        running_gateway(config_of(peer_config(hello, log_dir=str(tmp_path / "c")))) as c,
        running_gateway(
            config_of(front_config({"b": b_url, "c": c.url}, connect=connect))
        ) as front,
    ):
        await eventually(lambda: _is(peer_state(front, "b"), "stopped"))
        await eventually(lambda: _is(peer_state(front, "c"), "stopped"))
        # Both stopped, a tie: b, listed first, gets the request and starts loading.
        request = asyncio.create_task(call(front.v1, "/chat/completions", CHAT))
        await eventually(lambda: _is(peer_state(front, "b"), "starting"))
        pids = await eventually(lambda: _engine_pids(b_process.pid))
        # The box goes down: its turnout and the engine it was starting (a group of its own).
        os.killpg(b_process.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        status, body, headers = await asyncio.wait_for(request, 30)
        assert status == expected, body
        _, front_status, _ = await call(front.url, "/engine/status")
        assert "peer:b/fast" in front_status["targets"]
        if connect == "next":
            assert headers["x-turnout-target"] == "peer:c/fast"
            assert body["choices"][0]["message"]["content"].startswith("Hello")
        else:
            # Answered with b's failure (its connection dropped before any answer: the connect
            # class); c was never asked.
            assert "closed the connection before answering" in body["error"]["message"]
            _, c_status, _ = await call(c.url, "/engine/status")
            assert c_status["engines"]["fast"]["state"] == "stopped"
        await eventually(lambda: _unreachable(front, "b"))


async def test_two_turnouts_that_name_each_other_do_not_pass_a_request_back_and_forth(
    tmp_path: Path,
) -> None:
    a_port, b_port = free_port(), free_port()
    a_raw = front_config({"b": f"http://127.0.0.1:{b_port}"})
    b_raw = front_config({"a": f"http://127.0.0.1:{a_port}"})
    async with (
        running_gateway(config_of({**a_raw, "server": {"port": a_port}}), a_port) as a,
        running_gateway(config_of({**b_raw, "server": {"port": b_port}}), b_port) as b,
    ):
        status, body, _ = await asyncio.wait_for(call(a.v1, "/chat/completions", CHAT), 10)
        # b cannot serve fast itself and never sends a's request back: one hop, then b's
        # "no usable target" (its 503) as a's failed attempt.
        assert status == 502, body
        assert "peer:b/fast: upstream returned HTTP 503" in body["error"]["message"]
        assert "has no usable target" in body["error"]["message"]
        assert "all 1 attempts" in body["error"]["message"]
        _, b_status, _ = await call(b.url, "/engine/status")
        assert "peer:a/fast" not in b_status["targets"]
        _, a_status, _ = await call(a.url, "/engine/status")
        assert a_status["targets"]["peer:b/fast"]["consecutive_failures"] == 1


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def _unreachable(front: RunningGateway, peer: str) -> bool:
    _, status, _ = await call(front.url, "/engine/status")
    return status["peers"][peer]["reachable"] is False


async def _engine_pids(gateway_pid: int) -> list[int]:
    """The processes the gateway has spawned (its engine, still starting: /engine/status names
    a pid only once the engine is ready)."""
    try:
        return [child.pid for child in psutil.Process(gateway_pid).children()]
    except psutil.NoSuchProcess:
        return []
