"""The supervisor's inbox: the messages its owner task applies one at a time.

Callers and operation tasks only ever put these in the inbox; the owner alone acts on them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from gateway.errors import EngineStartError

log = logging.getLogger("turnout.engines")


@dataclass(slots=True)
class Lease:
    """Permission to send one request to ``role``'s engine; release it when the answer is done."""

    role: str
    requested: str
    note: str = ""
    waited: float = 0.0


@dataclass(slots=True, eq=False)
class Waiter:
    role: str
    requested: str
    arrived: float
    future: asyncio.Future[Lease]
    note: str = ""


@dataclass(slots=True)
class Acquire:
    waiter: Waiter


@dataclass(slots=True)
class Release:
    role: str


@dataclass(slots=True)
class Switch:
    role: str
    future: asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class Unload:
    roles: tuple[str, ...]
    future: asyncio.Future[None]


@dataclass(slots=True)
class OpDone:
    role: str
    kind: str  # "start" | "stop"
    pid: int | None = None
    error: str = ""
    exit_code: int | None = None
    cancelled: bool = False
    seconds: float = 0.0


@dataclass(slots=True)
class Exited:
    role: str
    code: int
    generation: int
    detail: str = ""


@dataclass(slots=True)
class Shutdown:
    future: asyncio.Future[None]


Message = Acquire | Release | Switch | Unload | OpDone | Exited | Shutdown


def start_outcome(role: str, task: asyncio.Task[int | None], seconds: float) -> OpDone:
    done = OpDone(role, "start", seconds=seconds)
    if task.cancelled():
        done.cancelled = True
        return done
    error = task.exception()
    if isinstance(error, EngineStartError):
        done.error, done.exit_code = str(error), error.exit_code
    elif error is not None:
        done.error = f"{error.__class__.__name__}: {error}"
    else:
        done.pid = task.result()
    return done


def stop_outcome(role: str, task: asyncio.Task[None]) -> OpDone:
    if not task.cancelled() and task.exception() is not None:
        log.error("stopping role %s failed: %r", role, task.exception())
    return OpDone(role, "stop")
