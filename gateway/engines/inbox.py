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
    # engines.agent_priority of the request's agent, added to its role's priority.
    priority: int = 0


@dataclass(slots=True)
class Acquire:
    waiter: Waiter


@dataclass(slots=True)
class Release:
    role: str


@dataclass(slots=True)
class Switch:
    role: str
    # The verdict: ready, failed, fallback (once the fallback is ready) or superseded.
    future: asyncio.Future[dict[str, Any]]
    # The owner's first decision (switching to the role or to its fallback), or the verdict
    # when that came first: what an answer that does not wait can truthfully say.
    accepted: asyncio.Future[dict[str, Any]]


@dataclass(slots=True, eq=False)
class PendingSwitch:
    """A switch not yet answered. After a fallback it waits for ``role`` in place of
    ``requested``, and its verdict says so."""

    role: str
    future: asyncio.Future[dict[str, Any]]
    accepted: asyncio.Future[dict[str, Any]]
    requested: str = ""
    reason: str = ""

    def fall_back(self, role: str, reason: str) -> None:
        self.requested = self.requested or self.role
        self.role, self.reason = role, reason

    def detail(self) -> dict[str, Any]:
        return {"requested": self.requested, "reason": self.reason} if self.requested else {}

    def accept(self) -> None:
        if not self.accepted.done():
            self.accepted.set_result({"status": "switching", "role": self.role, **self.detail()})

    def answer(self, result: dict[str, Any]) -> None:
        if self.requested and result.get("status") == "ready":
            result = {**result, "status": "fallback"}
        result = {**result, **self.detail()}
        for future in (self.accepted, self.future):
            if not future.done():
                future.set_result(result)


@dataclass(slots=True)
class Unload:
    roles: tuple[str, ...]
    future: asyncio.Future[None]


@dataclass(slots=True)
class OpDone:
    role: str
    kind: str  # "start" | "stop" | "sleep" (a stop that left the engine asleep)
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
class Sized:
    """A role's memory, estimated from its model file before a load or measured after one."""

    role: str
    estimated_mb: int = 0
    measured_mb: int = 0
    load_seconds: float | None = None
    # From the database (an earlier run), not from this run's engine.
    recalled: bool = False


@dataclass(slots=True)
class Shutdown:
    future: asyncio.Future[None]


Message = Acquire | Release | Switch | Unload | OpDone | Exited | Sized | Shutdown


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


def sleep_outcome(role: str, task: asyncio.Task[bool]) -> OpDone:
    """Asleep only when the driver says so; it stopped the engine when it could not sleep."""
    if task.cancelled():
        return OpDone(role, "stop")
    error = task.exception()
    if error is not None:
        log.error("putting role %s to sleep failed: %r", role, error)
        return OpDone(role, "stop")
    return OpDone(role, "sleep" if task.result() else "stop")
