"""The gateway's side of the tracing worker (``worker.py``): items shipped over a pipe; or,
with ``telemetry.worker: inline``, the same calls served on the event loop (``InlineLink``).

``add`` costs an append: items wait in a list and go out together, msgpack-encoded in one
call, every ``SHIP_SECONDS`` or as soon as they make ``SHIP_SPANS`` spans (half the export
queue if that is less). Fewer, larger shipments cost both processes less: measured under load
(six runs each, alternated), the worker's CPU per request was 4.3% of the event loop's when
shipped every 0.2 s, 5.0% every 0.05 s (it wakes less often, and stays warm through a batch).
The worker is started on the first shipment (not at start-up, which it would slow) and again,
after ``RESTART_SECONDS``, if it exits; the heads it knew are sent again. Nothing here waits
on the worker: while it is starting, items wait up to the export's ``max_queue`` spans; a pipe
the worker does not drain (more than ``PIPE_LIMIT`` bytes unsent) drops new items. Drops are counted and logged, as the
exporter's own are; traces must never slow or stop the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Protocol

from gateway.telemetry.encoding import Heads, Item, Templates, encode, prepare
from gateway.telemetry.exporter import BatchExporter, Warnings
from gateway.telemetry.settings import Export
from gateway.telemetry.worker import RESET_FRAME, export_frame, heads_frame, spans_frame

SHIP_SECONDS = 0.2
SHIP_SPANS = 1024
PIPE_LIMIT = 8 << 20
RESTART_SECONDS = 1.0
# The worker imports gateway.telemetry from the same tree as the gateway, installed or not.
_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerLink:
    __slots__ = (
        "_closing",
        "_dropped",
        "_export",
        "_heads",
        "_items",
        "_process",
        "_queued",
        "_reader",
        "_restart_after",
        "_ship_at",
        "_starting",
        "_timer",
        "_warn",
        "_worker_totals",
    )

    def __init__(self, export: Export) -> None:
        self._export = export
        self._ship_at = max(1, min(SHIP_SPANS, export.max_queue // 2))
        self._items: list[Item] = []
        self._queued = 0  # spans in ``_items``
        self._heads: dict[int, Heads] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._restart_after = 0.0
        self._closing = False
        self._dropped = 0
        self._worker_totals = {"sent": 0, "failed": 0, "dropped": 0}
        self._warn = Warnings()

    # --- what the exporter used to count, now the worker's totals -----------------------------

    @property
    def sent(self) -> int:
        return self._worker_totals["sent"]

    @property
    def failed(self) -> int:
        return self._worker_totals["failed"]

    @property
    def dropped(self) -> int:
        return self._dropped + self._worker_totals["dropped"]

    @property
    def worker_pid(self) -> int | None:
        """The running worker's process id (None before the first shipment or between two)."""
        return self._process.pid if self._process is not None else None

    # --- the tracer's calls ---------------------------------------------------------------------

    def heads(self, heads_id: int, heads: Heads) -> None:
        """New numbered heads, sent before any item that names them."""
        self._heads[heads_id] = heads
        self._send(heads_frame(heads_id, heads))

    def reset_heads(self) -> None:
        """The tracer started its heads over (numbers are never reused)."""
        self._ship()
        if self._items:
            # Not shipped (the worker is starting): they need the heads held now, all of
            # which go to the worker when it is up; forget them at a later start-over.
            return
        self._heads.clear()
        self._send(RESET_FRAME)

    def add(self, item: Item, spans: int) -> None:
        """``item``, which makes ``spans`` spans."""
        if self._queued + spans > self._export.max_queue:
            self._drop(spans, "the export queue is full")
            return
        self._items.append(item)
        self._queued += spans
        if self._queued >= self._ship_at:
            self._ship()
        elif self._timer is None and not self._closing:
            self._timer = asyncio.get_running_loop().call_later(SHIP_SECONDS, self._ship)

    # --- shipping -------------------------------------------------------------------------------

    def _ship(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._items:
            return
        process = self._process
        if process is None or process.stdin is None:
            self._start()
            return  # shipped once the worker is up
        items, spans = self._items, self._queued
        self._items, self._queued = [], 0
        self._send(spans_frame(spans, items), dropping=spans)

    def _send(self, data: bytes, dropping: int = 0) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return  # heads: sent to the worker when it starts
        transport = process.stdin.transport
        if transport.is_closing():
            return  # the worker is gone: its reader starts another
        if dropping and transport.get_write_buffer_size() > PIPE_LIMIT:
            # Items only: heads are a few hundred bytes, and items to come name them.
            self._drop(dropping, "the tracing worker does not keep up")
            return
        process.stdin.write(data)

    def _start(self) -> None:
        if self._starting is not None or self._closing:
            return
        if time.monotonic() < self._restart_after:
            # Too soon after the last worker ended: try again with the next shipment.
            self._timer = asyncio.get_running_loop().call_later(SHIP_SECONDS, self._ship)
            return
        self._starting = asyncio.get_running_loop().create_task(self._spawn())

    async def _spawn(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.telemetry.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                # Out of the gateway's process group: Ctrl-C or a signal to the group stops the
                # gateway, whose shutdown then ends the worker (worker.py's main says why).
                start_new_session=True,
            )
        except OSError as exc:
            self._restart_after = time.monotonic() + RESTART_SECONDS
            self._warn(f"the tracing worker did not start: {exc}")
            return
        finally:
            self._starting = None
        assert process.stdin is not None
        process.stdin.write(export_frame(self._export))
        for heads_id, heads in self._heads.items():
            process.stdin.write(heads_frame(heads_id, heads))
        self._process = process
        self._reader = asyncio.get_running_loop().create_task(self._read(process))
        self._ship()

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """The worker's totals and warnings, until it exits."""
        assert process.stdout is not None
        before = dict(self._worker_totals)
        while line := await process.stdout.readline():
            with contextlib.suppress(ValueError):
                report = json.loads(line)
                if "warning" in report:
                    self._warn(str(report["warning"]))
                else:
                    # Totals count from this worker's start: add what earlier workers sent.
                    for name in self._worker_totals:
                        self._worker_totals[name] = before[name] + int(report.get(name, 0))
        code = await process.wait()
        if self._process is process:
            self._process = None
        if not self._closing:
            self._restart_after = time.monotonic() + RESTART_SECONDS
            self._warn(f"the tracing worker exited ({code}); starting another")

    # --- the end --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Ships what waits, lets the worker send everything it holds, and waits for it."""
        if self._starting is not None:
            await self._starting
        if self._items and self._process is None:
            self._restart_after = 0.0
            self._start()
            if self._starting is not None:
                await self._starting
        self._ship()
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        process = self._process
        if process is None or process.stdin is None:
            return
        process.stdin.close()
        # The worker sends what it holds (one post per batch, each within the export timeout).
        try:
            async with asyncio.timeout(self._export.timeout_seconds * 2 + 5):
                if self._reader is not None:
                    await self._reader
        except TimeoutError:
            self._warn("the tracing worker did not finish in time; stopped")
            process.kill()
            await process.wait()

    def _drop(self, spans: int, why: str) -> None:
        self._dropped += spans
        self._warn(f"{self.dropped} spans dropped so far: {why}")


class InlineLink:
    """The same calls as ``WorkerLink``, encoded and exported on the gateway's own event loop
    (``telemetry.worker: inline``): no second process; the batch exporter encodes at flush
    time, many requests at a time, in slices with a turn of the loop between them."""

    __slots__ = ("_exporter", "_heads")

    def __init__(self, export: Export) -> None:
        self._heads: dict[int, Templates] = {}
        heads = self._heads
        self._exporter: BatchExporter[Item] = BatchExporter(export, lambda i: encode(i, heads))

    @property
    def sent(self) -> int:
        return self._exporter.sent

    @property
    def failed(self) -> int:
        return self._exporter.failed

    @property
    def dropped(self) -> int:
        return self._exporter.dropped

    @property
    def worker_pid(self) -> int | None:
        return None

    def heads(self, heads_id: int, heads: Heads) -> None:
        self._heads[heads_id] = prepare(heads)

    def reset_heads(self) -> None:
        # Items waiting still name the old heads (numbers are never reused): forget those
        # once the items are encoded.
        retired = list(self._heads)
        asyncio.get_running_loop().create_task(self._forget(retired))

    async def _forget(self, retired: list[int]) -> None:
        await self._exporter.encode_waiting()
        for heads_id in retired:
            self._heads.pop(heads_id, None)

    def add(self, item: Item, spans: int) -> None:
        self._exporter.add([item], spans)

    async def close(self) -> None:
        await self._exporter.close()


class Link(Protocol):
    """Where the tracer's items go: ``WorkerLink`` or ``InlineLink`` (a benchmark records the
    frames a worker would get with a third)."""

    @property
    def sent(self) -> int: ...

    @property
    def failed(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def worker_pid(self) -> int | None: ...

    def heads(self, heads_id: int, heads: Heads) -> None: ...

    def reset_heads(self) -> None: ...

    def add(self, item: Item, spans: int) -> None: ...

    async def close(self) -> None: ...
