"""Shared fixtures: real engines (built by tests/engines/) and real fake upstreams on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines.engines import LlamaServer, ensure_models, llama_server_binary

# Bugs are loud in tests: an illegal engine state move raises (gateway/engines/states.py).
os.environ.setdefault("TURNOUT_DEBUG", "1")


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
