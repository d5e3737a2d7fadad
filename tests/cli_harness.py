"""What the CLI tests share: a real turnout on a thread of its own, and the CLI as a subprocess.

The gateway (and its fake upstream) run on a private event loop in a background thread, so
the tests themselves are plain functions that block on subprocesses and pseudo-terminals
without stalling the server they talk to.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "admin-secret"


@dataclass
class Served:
    url: str
    gateway: RunningGateway
    fake: FakeOpenAI | None


@contextmanager
def serve_in_thread(
    raw: Callable[[FakeOpenAI | None], dict[str, Any]],
    fake: FakeOpenAI | None = None,
    start_timeout: float = 60.0,
) -> Iterator[Served]:
    """Run ``fake`` (if any) and a gateway configured by ``raw(fake)`` until the block ends."""
    ready = threading.Event()
    served: list[Served] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        upstream: AbstractAsyncContextManager[Any] = fake if fake is not None else nullcontext()
        try:
            async with upstream, running_gateway(config_of(raw(fake))) as gw:
                served.append(Served(gw.url, gw, fake))
                ready.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(start_timeout) or failure:
            raise RuntimeError(f"the gateway did not start: {failure}")
        yield served[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with an empty home: no TURNOUT_* settings, no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_DATA_HOME", None)
    return {**env, "HOME": str(home), "TURNOUT_CHAT_HISTORY": str(home / "history"), **extra}


def turnout(
    *args: str,
    env: dict[str, str],
    stdin: str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
