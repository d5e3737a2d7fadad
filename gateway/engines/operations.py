"""The slow parts the engine supervisor launches, each reporting back through its inbox.

Starting and stopping engines, watching for an engine that exits on its own, sizing roles
(reading model files, processes and the database), and publishing each state as a metric. The
owner task (``supervisor.py``) decides; these act, as tasks whose outcome comes back as a
message (``inbox.py``), so the owner stays the only one that changes engine state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from gateway.engines.inbox import (
    Exited,
    Message,
    OpDone,
    Sized,
    sleep_outcome,
    start_outcome,
    stop_outcome,
)
from gateway.engines.process import EngineDriver, Sleeper
from gateway.engines.progress import Progress
from gateway.engines.states import EngineState, EngineStatus
from gateway.metrics import Metrics

log = logging.getLogger("turnout.engines")


class Operations:
    """The tasks running for the owner, by role; the owner reads ``running`` to plan."""

    def __init__(
        self,
        drivers: Mapping[str, EngineDriver],
        status: Mapping[str, EngineStatus],
        inbox: asyncio.Queue[Message],
        metrics: Metrics,
    ) -> None:
        self._drivers = drivers
        self._status = status
        self._inbox = inbox
        self._metrics = metrics
        # The start or stop under way per role.
        self.running: dict[str, asyncio.Task[Any]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # Bumped whenever a role's process is (un)watched: an exit reported by an older watcher
        # is about a process the owner already let go of.
        self.generation = dict.fromkeys(status, 0)
        self._sizing: set[asyncio.Task[None]] = set()
        # Roles whose engine sleeps when evicted instead of stopping (the scheduler decides).
        self.sleepers = frozenset(r for r, d in drivers.items() if isinstance(d, Sleeper))
        # Each role's loading stage, published as engine events (progress.py).
        self.progress = Progress(status)

    def size_later(self, work: Coroutine[Any, Any, Sized | list[Sized] | None], name: str) -> None:
        """Sizing reads files, processes and the database: done in a task, reported back as
        ``Sized`` messages for the owner to apply."""

        async def report() -> None:
            result = await work
            for sized in result if isinstance(result, list) else [result]:
                if sized is not None:
                    self._inbox.put_nowait(sized)

        task = asyncio.get_running_loop().create_task(report(), name=f"size-{name}")
        self._sizing.add(task)
        task.add_done_callback(self._sizing.discard)

    def start(self, role: str) -> None:
        self._status[role].enter(EngineState.STARTING)
        self.publish(role)
        log.info("role %s starting", role)
        started = time.monotonic()
        # In a context of its own: what the driver reports (loading, ...) reaches the role.
        task = asyncio.get_running_loop().create_task(
            self._drivers[role].start(), name=f"start-{role}", context=self.progress.starting(role)
        )
        # A done-callback, not code after the await: it also fires for a task cancelled before
        # it ever ran, so every start is answered exactly once.
        task.add_done_callback(
            lambda t: self._inbox.put_nowait(start_outcome(role, t, time.monotonic() - started))
        )
        self.running[role] = task

    def stop(self, role: str) -> None:
        status = self._status[role]
        if status.state is EngineState.STARTING:
            self.abort_start(role)
            return
        status.enter(EngineState.STOPPING)
        self.publish(role)
        self.unwatch(role)
        task = asyncio.get_running_loop().create_task(
            self._drivers[role].stop(), name=f"stop-{role}"
        )
        task.add_done_callback(lambda t: self._inbox.put_nowait(stop_outcome(role, t)))
        self.running[role] = task

    def sleep(self, role: str) -> None:
        """Stop, for an engine that can sleep instead (``Sleeper``): its process lives on."""
        driver = self._drivers[role]
        status = self._status[role]
        if status.state is EngineState.STARTING or not isinstance(driver, Sleeper):
            self.stop(role)
            return
        status.enter(EngineState.STOPPING)
        self.publish(role)
        self.unwatch(role)
        task = asyncio.get_running_loop().create_task(
            self._sleep_or_stop(driver), name=f"sleep-{role}"
        )
        task.add_done_callback(lambda t: self._asleep(role, sleep_outcome(role, t)))
        self.running[role] = task

    def _asleep(self, role: str, outcome: OpDone) -> None:
        self._inbox.put_nowait(outcome)
        if outcome.kind == "sleep":
            # A process that dies asleep is failed now, not found dead at its next wake: the
            # owner applies the sleep first (the exit can only be seen by a later task step).
            self.watch(role)

    @staticmethod
    async def _sleep_or_stop(driver: Sleeper) -> bool:
        try:
            return await driver.sleep()
        except BaseException:
            # Reported as stopped: then nothing may be left running.
            await driver.stop()
            raise

    def abort_start(self, role: str) -> None:
        """Stop during start: cancelling the start op makes its driver kill what it spawned."""
        op = self.running.get(role)
        if op is not None:
            op.cancel()
        self._status[role].enter(EngineState.STOPPING)
        self.publish(role)

    def watch(self, role: str) -> None:
        """Turn an engine's unexpected exit into a message for the owner."""
        self.generation[role] += 1
        generation = self.generation[role]
        driver = self._drivers[role]
        # Woken from sleep: the watcher of its sleep is still on the same process.
        previous = self._watchers.pop(role, None)
        if previous is not None:
            previous.cancel()

        async def watch() -> None:
            code = await driver.wait_exit()
            self._inbox.put_nowait(Exited(role, code, generation, driver.exit_detail()))

        self._watchers[role] = asyncio.get_running_loop().create_task(watch(), name=f"watch-{role}")

    def unwatch(self, role: str) -> None:
        self.generation[role] += 1
        watcher = self._watchers.pop(role, None)
        if watcher is not None:
            watcher.cancel()

    def forget_watcher(self, role: str) -> None:
        """The watcher reported its exit: it is done."""
        self._watchers.pop(role, None)

    async def stop_everything(self) -> None:
        """At shutdown: cancel what runs, stop every engine, and publish them stopped."""
        for task in list(self._sizing):
            task.cancel()
        for op in list(self.running.values()):
            op.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        for role, status in self._status.items():
            self.unwatch(role)
            if status.state in (EngineState.STARTING, EngineState.READY, EngineState.SLEEPING):
                status.enter(EngineState.STOPPING)
        await asyncio.gather(*(self._stop_quietly(r) for r in self._status))
        for role, status in self._status.items():
            if status.state is not EngineState.STOPPED:
                status.enter(EngineState.STOPPED)
            status.pid = None
            self.publish(role)
        self.progress.close()

    async def _stop_quietly(self, role: str) -> None:
        with contextlib.suppress(Exception):
            await self._drivers[role].stop()

    def publish(self, role: str) -> None:
        """Every state change is visible as a metric (and in /engine/status, which reads status)."""
        state = self._status[role].state
        for candidate in EngineState:
            self._metrics.child(self._metrics.engine_state, role, candidate.value).set(
                1 if candidate is state else 0
            )
