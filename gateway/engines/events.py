"""Engine events: every change of a role's state or loading stage, as a small typed stream.

The supervisor publishes (``progress.py`` decides what a stage is); readers subscribe: the
relay, to tell a stream that waits for a swap how far it got (SSE comments), and
``GET /engine/events``, for the dashboard and ``turnout switch``. Publishing is a dict lookup
when nothing changed and one ``put_nowait`` per subscriber when something did: the owner task
never waits for a reader. A reader too slow to keep up loses its oldest events, never blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import msgspec

# What a role is doing, as a word a client can switch on; ``subject`` names the role the stage
# is about when that is another one (the engine being stopped for it, the fallback serving it).
Stage = Literal[
    "stopped",
    "queued",
    "stopping",
    "starting",
    "loading",
    "restoring cache",
    "ready",
    "falling back",
    "sleeping",
    "failed",
]

# A reader this many events behind loses the oldest ones.
BACKLOG = 256
# Recent events kept for readers that arrive late (a stream's first keep-alive comes after a
# whole interval): enough for every stage of a few swaps.
RECENT = 64


class EngineEvent(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    # The engine's state (``states.EngineState``'s value): stopped, starting, ready, ...
    state: str
    stage: Stage
    subject: str
    # One line for people: "starting role fast", "stopping role coder".
    text: str
    # Wall-clock seconds.
    at: float

    def same_as(self, other: EngineEvent | None) -> bool:
        return (
            other is not None
            and other.state == self.state
            and other.stage == self.stage
            and other.subject == self.subject
            and other.text == self.text
        )


def describe(stage: Stage, role: str, subject: str, error: str = "") -> str:
    if stage == "queued":
        return f"queued for role {role}"
    if stage == "restoring cache":
        return f"restoring the KV cache of role {subject}"
    if stage == "ready":
        return f"role {subject} ready"
    if stage == "falling back":
        return f"role {role} cannot be served: falling back to role {subject}"
    if stage == "failed":
        return f"role {subject} failed" + (f": {error}" if error else "")
    if stage in ("stopped", "sleeping"):
        return f"role {subject} {stage}"
    return f"{stage} role {subject}"


def event(role: str, state: str, stage: Stage, subject: str = "", error: str = "") -> EngineEvent:
    subject = subject or role
    return EngineEvent(
        role=role,
        state=state,
        stage=stage,
        subject=subject,
        text=describe(stage, role, subject, error),
        at=time.time(),
    )


class Subscription:
    """One reader's events, in order; ``None`` from ``next`` means the stream ended."""

    __slots__ = ("_queue", "ended")

    def __init__(self) -> None:
        self._queue: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        self.ended = False

    def offer(self, item: EngineEvent | None) -> None:
        if self.ended:
            return
        if item is not None and self._queue.qsize() >= BACKLOG:
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    def close(self) -> None:
        """Ends the stream for this reader (the gateway stops, or the reader leaves)."""
        self.offer(None)
        self.ended = True

    async def next(self) -> EngineEvent | None:
        return await self._queue.get()

    def get_task(self) -> asyncio.Task[EngineEvent | None]:
        """The next event as a task, for waiting on it beside something else."""
        return asyncio.get_running_loop().create_task(self._queue.get())


class EngineEvents:
    """The hub: the latest event per role, the recent ones, and the subscribers."""

    def __init__(self) -> None:
        self.latest: dict[str, EngineEvent] = {}
        # With the ``time.perf_counter()`` each was published: the clock requests start by.
        self._recent: deque[tuple[float, EngineEvent]] = deque(maxlen=RECENT)
        self._readers: set[Subscription] = set()
        self.closed = False

    def publish(self, item: EngineEvent) -> bool:
        """Records ``item`` and hands it to every reader; False (and nothing) when it says only
        what the role's latest event said."""
        if item.same_as(self.latest.get(item.role)):
            return False
        self.latest[item.role] = item
        self._recent.append((time.perf_counter(), item))
        for reader in self._readers:
            reader.offer(item)
        return True

    def since(self, started: float) -> list[EngineEvent]:
        """The recent events published at or after ``started`` (``time.perf_counter()``)."""
        return [e for at, e in self._recent if at >= started]

    def snapshot(self) -> list[EngineEvent]:
        return list(self.latest.values())

    @property
    def readers(self) -> int:
        return len(self._readers)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        reader = Subscription()
        if self.closed:
            reader.close()
        else:
            self._readers.add(reader)
        try:
            yield reader
        finally:
            self._readers.discard(reader)

    def close(self) -> None:
        """The supervisor stopped: every reader's stream ends; later ones end at once."""
        self.closed = True
        for reader in self._readers:
            reader.close()
        self._readers.clear()
