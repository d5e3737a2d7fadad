"""Shared fixtures: real engines (built by tests/engines/) and real fake upstreams on loopback."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.engines.engines import LlamaServer, ensure_models, llama_server_binary
from tests.postgres_server import PostgresServer

# Bugs are loud in tests: an illegal engine state move raises (gateway/engines/states.py).
os.environ.setdefault("TURNOUT_DEBUG", "1")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on a loopback port, for one test module."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def database(cluster: PostgresServer) -> str:
    """A new, empty database on the module's cluster: its ``postgresql://`` URL."""
    return cluster.new_database()


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    if llama_server_binary() is None:
        pytest.skip(
            "llama-server not built: run tests/engines/build_llama_server.sh (tests/run.sh does)"
        )
    return ensure_models()


@pytest.fixture(scope="session")
def llama_hello(tiny_models: dict[str, Path]) -> Iterator[LlamaServer]:
    """A real llama-server whose model always answers HELLO_TEXT."""
    with LlamaServer(tiny_models["tiny-hello"], alias="tiny-hello") as server:
        yield server


@pytest.fixture(scope="session")
def llama_toolcall(tiny_models: dict[str, Path]) -> Iterator[LlamaServer]:
    """A real llama-server whose model always calls get_weather(city="Paris")."""
    with LlamaServer(tiny_models["tiny-toolcall"], alias="tiny-toolcall") as server:
        yield server


# --- threads left behind -----------------------------------------------------------------------
# A non-daemon thread still running when the session ends (an aiosqlite connection nobody
# closed, an executor worker blocked on a socket) would keep the interpreter from exiting after
# pytest's summary: CI would hang until its limit. Such a thread is a leak in the code under
# test, so it is named, with where it waits; the process then exits at once with pytest's own
# status (the leak is reported, not allowed to hang the run).
LEFTOVER_GRACE_SECONDS = 5.0
_exit_status: list[int] = [0]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status[0] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while (leftover := _leftover_threads()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not leftover:
        return
    frames = sys._current_frames()
    report = [f"\n{len(leftover)} non-daemon thread(s) still running after the tests:"]
    for thread in leftover:
        report.append(f"--- {thread.name} ({type(thread).__module__}.{type(thread).__qualname__})")
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            report.extend(line.rstrip() for line in traceback.format_stack(frame)[-6:])
    sys.stderr.write("\n".join(report) + "\n")
    sys.stderr.flush()
    os._exit(_exit_status[0])


def _leftover_threads() -> list[threading.Thread]:
    frames = sys._current_frames()
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread()
        and not t.daemon
        and t.is_alive()
        and not _idle_executor_worker(frames.get(t.ident or -1))
    ]


def _idle_executor_worker(frame: FrameType | None) -> bool:
    """An executor's worker waiting for work: the interpreter's exit wakes and joins it."""
    return (
        frame is not None
        and frame.f_code.co_name == "_worker"
        and frame.f_code.co_filename.endswith(os.path.join("concurrent", "futures", "thread.py"))
    )
