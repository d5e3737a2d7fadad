"""An engine process's mechanics (``process.ProcessDriver``, ``child.spawn``) against a fake engine
process on a free loopback port (``tests/fakes/engine_process.py``): readiness, stop, its
connections, and its death with the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from adapters.connections import PoolConnector
from gateway.config.engines import Role
from gateway.engines.process import POLL_SECONDS, ProcessDriver
from tests.engines.engines import free_port

FAKE = str(Path(__file__).parent / "fakes" / "engine_process.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def fake_driver(
    tmp_path: Path,
    session: aiohttp.ClientSession,
    *flags: str,
    stop_timeout_seconds: float = 10.0,
    poll_seconds: float = POLL_SECONDS,
) -> tuple[ProcessDriver, int]:
    port = free_port()
    role = Role(
        engine="llamacpp",
        model="unused",
        start_timeout_seconds=60,
        stop_timeout_seconds=stop_timeout_seconds,
    )
    command = [sys.executable, FAKE, str(port), *flags]
    driver = ProcessDriver(
        "fake", role, command, port, tmp_path / "fake.log", session, poll_seconds=poll_seconds
    )
    return driver, port


async def test_an_engine_is_ready_as_soon_as_it_logs_not_a_poll_interval_later(
    tmp_path: Path,
) -> None:
    async with aiohttp.ClientSession() as session:
        # A minute between health polls, unless the engine's log says to look.
        driver, _ = fake_driver(tmp_path, session, "--ready-after", "0.3", poll_seconds=60)
        try:
            # Well under the minute a poll interval would take: its "listening" line was the cue.
            async with asyncio.timeout(30):
                pid = await driver.start()
            assert pid is not None and driver.pid == pid
        finally:
            await driver.stop()


async def test_an_engine_ignoring_sigterm_is_killed_once_its_stop_timeout_passes(
    tmp_path: Path,
) -> None:
    async with aiohttp.ClientSession() as session:
        driver, _ = fake_driver(tmp_path, session, "--ignore-sigterm", stop_timeout_seconds=0.5)
        pid = await driver.start()
        assert pid is not None and alive(pid)
        await driver.stop()
        assert not alive(pid) and driver.pid is None
        # It never got to exit on its own: SIGKILL ended it.
        assert "connections open at exit" not in (tmp_path / "fake.log").read_text()
        await driver.stop()  # idempotent


async def test_stopping_an_engine_first_closes_the_idle_connections_turnout_keeps_to_it(
    tmp_path: Path,
) -> None:
    # llama-server holds its exit until idle keep-alive connections close: a swap waiting for
    # the old engine would wait for them too.
    connector = PoolConnector(keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        driver, port = fake_driver(tmp_path, session)
        await driver.start()
        async with session.get(f"http://127.0.0.1:{port}/health") as response:
            assert response.status == 200
            await response.read()
        await driver.stop()
    assert "connections open at exit: 0" in (tmp_path / "fake.log").read_text()


SPAWNING_PARENT = """
import asyncio, os, sys
from gateway.engines.child import spawn

async def main():
    with open(os.devnull, "wb") as devnull:
        child = spawn([sys.executable, sys.argv[1], sys.argv[2]], dict(os.environ), devnull)
    print(child.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
            return True
    except OSError:
        return False


def test_an_engine_dies_with_the_gateway_however_the_gateway_dies() -> None:
    port = free_port()
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWNING_PARENT, FAKE, str(port)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        # Up and answering: past the instant between its spawn and its asking for the signal.
        for _ in range(600):
            if answers(port):
                break
            time.sleep(0.05)
        assert alive(pid) and answers(port)
        parent.send_signal(signal.SIGKILL)  # no cleanup of its own can run
        parent.wait()
        for _ in range(200):
            if not alive(pid):
                break
            time.sleep(0.05)
        assert not alive(pid)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
