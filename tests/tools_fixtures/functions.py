"""Plain functions for the python executor (named in tests as ``tests.tools_fixtures.functions:…``)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from gateway.plugins.tools.registry import Caller


def get_weather(city: str) -> dict[str, Any]:
    """Blocking on purpose: the executor must run it off the event loop."""
    return {"city": city, "temperature_c": 21, "thread": threading.current_thread().name}


async def add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def whoami(caller: Caller) -> dict[str, Any]:
    return {"agent_id": caller.agent_id, "request_id": caller.request_id}


def broken(**_: Any) -> None:
    raise RuntimeError("the tool is broken")


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


async def slow_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


def not_json() -> object:
    return object()


def wrong_shape() -> dict[str, Any]:
    return {"temperature_c": "warm"}


NOT_CALLABLE = 42
