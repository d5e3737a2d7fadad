"""The engine supervisor: one owner task that alone changes engine state.

Callers never look at state and then act on it (that is how swap races happen). They put a
message in the owner's inbox and await a future: ``acquire`` a role for one request,
``switch`` to a role, ``unload`` (the messages are in ``inbox.py``). The owner applies
messages one at a time, then reconciles: the pure scheduler (``scheduler.py``, over the policy
in ``policy.py``) plans what should happen next (admit queued requests, evict, start, stop)
without doing any of it; only then does the owner apply the plan, answering futures and
launching the slow parts (spawning, health polling, stopping) as operation tasks whose
completion comes back through the same inbox.

Invariants the owner keeps:
- a role with requests in flight is never stopped (swaps and idle unloads wait for them);
- at most one start or stop per group at a time;
- a request is admitted only to a READY role that is not draining for a swap;
- every waiter is answered: a lease, a clear error, or its own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config.engines import Engines, Role
from gateway.engines import scheduler, sizing
from gateway.engines.inbox import (
    Acquire,
    Exited,
    Lease,
    Message,
    OpDone,
    PendingSwitch,
    Release,
    Shutdown,
    Sized,
    Switch,
    Unload,
    Waiter,
)
from gateway.engines.memory import Footprint
from gateway.engines.operations import Operations
from gateway.engines.policy import Topology, backoff, pick_fallback
from gateway.engines.process import EngineDriver
from gateway.engines.resources import Resources
from gateway.engines.states import EngineState, EngineStatus, by_recency
from gateway.errors import EngineUnavailable
from gateway.metrics import Metrics

__all__ = ["EngineUnavailable", "Lease", "Supervisor"]

log = logging.getLogger("turnout.engines")


class Supervisor:
    def __init__(
        self,
        roles: Mapping[str, Role],
        engines: Engines,
        drivers: Mapping[str, EngineDriver],
        metrics: Metrics,
        resources: Callable[[], Resources],
        unmanaged: frozenset[str] = frozenset(),
        database: str = "",
    ) -> None:
        self.roles = roles
        self._cfg = engines
        self._metrics = metrics
        self._resources = resources
        # Where measured sizes are remembered across restarts ("": nowhere).
        self._database = database
        self.topology = Topology.build(roles, engines, unmanaged)
        self._status = {name: EngineStatus(name) for name in roles}
        # Memory per role: estimated from the model file at start, measured after each load.
        self._footprints = {name: Footprint() for name in roles}
        self._waiters: list[Waiter] = []
        self._switches: list[PendingSwitch] = []
        # Preloaded and persistent roles not yet loaded: started once their group has room.
        self._wanted: set[str] = set()
        self._unloads: list[tuple[set[str], asyncio.Future[None]]] = []
        self._unloading: set[str] = set()
        # Roles that take no new requests because a swap will evict them once theirs finish.
        self._draining: set[str] = set()
        self._pinned: str | None = None
        self._switch_started: dict[str, float] = {}
        self._planned_at = 0.0  # the last plan's clock: what is due by then, it has seen
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._effects = Operations(drivers, self._status, self._inbox, metrics)
        self.events = self._effects.progress.events  # state and stage changes, for readers
        self._owner: asyncio.Task[None] | None = None
        for name in roles:
            self._effects.publish(name)

    # --- the callers' side ------------------------------------------------------------------

    async def start(self) -> None:
        # Loaded as soon as there is room, without pinning or evicting anything: one switch per
        # preloaded role would supersede the one before it, and persistent group members are
        # documented as loaded at start-up. Nobody awaits these: the gateway's start goes on.
        self._wanted = set(self._cfg.preload) | set(self.topology.persistent)
        self._owner = asyncio.get_running_loop().create_task(self._run(), name="engine-supervisor")
        self._effects.size_later(sizing.initial_sizes(self.roles, self._database), "estimate")

    async def stop(self) -> None:
        """Stop every engine (no orphans) and answer every waiter."""
        if self._owner is None or self._owner.done():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Shutdown(done))
        await done
        await self._owner

    async def acquire(
        self, role: str, requested: str | None = None, note: str = "", agent: str = ""
    ) -> Lease:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lease] = loop.create_future()
        priority = self._cfg.agent_priority.get(agent, 0)
        waiter = Waiter(role, requested or role, time.monotonic(), future, note, priority)
        self._inbox.put_nowait(Acquire(waiter))
        try:
            async with asyncio.timeout(self._cfg.wait_timeout_seconds):
                return await future
        except TimeoutError:
            self._return_unused(future)
            state = self._status[waiter.role]
            raise EngineUnavailable(
                f"role {waiter.role!r} was not ready after waiting {self._cfg.wait_timeout_seconds:g} s "
                f"(state: {state.state}{'; last error: ' + state.last_error if state.last_error else ''})"
            ) from None
        except asyncio.CancelledError:
            self._return_unused(future)
            raise

    def _return_unused(self, future: asyncio.Future[Lease]) -> None:
        """A lease granted just as its requester gave up must not leak an in-flight slot."""
        if future.done() and not future.cancelled() and future.exception() is None:
            self.release(future.result())

    def release(self, lease: Lease) -> None:
        self._inbox.put_nowait(Release(lease.role))

    async def switch(self, role: str, wait: bool) -> dict[str, Any]:
        """Make ``role`` the loaded one (evicting its group peers once their requests finish).

        Without ``wait``: the owner's first decision (``switching`` to the role or to its
        fallback, or the verdict if it came at once); with it, the verdict."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        accepted: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._inbox.put_nowait(Switch(role, future, accepted))
        return await asyncio.shield(future if wait else accepted)

    async def unload(self, roles: tuple[str, ...]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Unload(roles or tuple(self.roles), future))
        await asyncio.shield(future)

    def status(self, role: str) -> EngineStatus:
        return self._status[role]

    def queue_depth(self, role: str) -> int:
        return sum(1 for w in self._waiters if w.role == role and not w.future.done())

    @property
    def pinned(self) -> str | None:
        return self._pinned

    def loaded(self) -> list[str]:
        """Ready roles, the one last switched to or loaded for requests first."""
        return by_recency(self._status.values())

    def footprint(self, role: str) -> Footprint:
        return self._footprints[role]

    def need_mb(self, role: str) -> int:
        """The memory ``role`` is planned with: measured, configured or estimated (0: unknown)."""
        return self._footprints[role].need_mb(self.roles[role].memory_mb)

    def victims(self, role: str) -> list[str]:
        """The loaded roles a switch to ``role`` would unload now."""
        return scheduler.victims(self._snapshot(), role, time.monotonic())

    # --- the owner task -------------------------------------------------------------------------

    async def _run(self) -> None:
        # Once before any message: preloaded and persistent roles start now.
        self._reconcile_safely()
        while True:
            wake = scheduler.next_wake(self._snapshot(), self._planned_at)
            message: Message | None = None
            try:
                if wake is None:
                    message = await self._inbox.get()
                else:
                    async with asyncio.timeout(max(0.0, wake - time.monotonic())):
                        message = await self._inbox.get()
            except TimeoutError:
                message = None
            batch = [message] if message is not None else []
            # Apply a burst of messages before reconciling once: 16 requests arriving together
            # are planned as one group, not 16 times.
            while not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            for item in batch:
                if isinstance(item, Shutdown):
                    await self._shutdown()
                    item.future.set_result(None)
                    return
                self._apply(item)
            self._reconcile_safely()

    def _reconcile_safely(self) -> None:
        try:
            self._reconcile()
        except Exception:
            # The owner must survive its own bugs: log, and keep answering.
            log.exception("engine supervisor reconcile failed")
        finally:
            # A switch that does not wait is answered with what was decided, even after a bug.
            for pending in self._switches:
                pending.accept()

    def _apply(self, message: Message) -> None:
        now = time.monotonic()
        if isinstance(message, Acquire):
            self._waiters.append(message.waiter)
        elif isinstance(message, Release):
            status = self._status[message.role]
            status.inflight -= 1
            status.last_used = now
        elif isinstance(message, Switch):
            self._apply_switch(message)
        elif isinstance(message, Unload):
            roles = {r for r in message.roles if r in self.roles}
            self._unloading |= roles
            self._wanted -= roles
            if self._pinned in roles:
                self._pinned = None
            self._unloads.append((roles, message.future))
        elif isinstance(message, OpDone):
            self._apply_done(message)
        elif isinstance(message, Exited):
            self._apply_exit(message)
        elif isinstance(message, Sized):
            self._apply_sized(message)

    def _apply_sized(self, sized: Sized) -> None:
        sizing.apply(self._footprints[sized.role], sized, self.roles[sized.role].memory_mb)

    def _apply_switch(self, message: Switch) -> None:
        role = message.role
        # Last one wins: earlier switches still pending are answered as superseded, and a start
        # in progress for one of them is aborted.
        for pending in self._switches:
            if pending.role != role:
                pending.answer({"status": "superseded", "role": pending.role, "by": role})
        self._switches = [p for p in self._switches if not p.future.done()]
        previous = self._pinned
        if (
            previous is not None
            and previous != role
            and self._status[previous].state is EngineState.STARTING
        ):
            self._effects.abort_start(previous)
        self._unloading.discard(role)
        status = self._status[role]
        pending = PendingSwitch(role, message.future, message.accepted)
        if status.state is EngineState.READY and not scheduler.must_make_room(
            self._snapshot(), role, time.monotonic()
        ):
            # Already loaded (perhaps beside others in its group): it becomes the current one.
            status.chosen_at = time.monotonic()
            pending.answer({"status": "ready", "role": role, "already": True})
            self._pinned = None
            return
        self._pinned = role
        self._switch_started.setdefault(role, time.monotonic())
        self._switches.append(pending)

    def _apply_done(self, done: OpDone) -> None:
        self._effects.running.pop(done.role, None)
        status = self._status[done.role]
        now = time.monotonic()
        if done.kind == "sleep":
            status.enter(EngineState.SLEEPING)
            status.ready_at = None
            log.info("role %s asleep (pid %s)", done.role, status.pid)
        elif done.kind == "stop" or done.cancelled:
            status.enter(EngineState.STOPPED)
            status.pid = None
            status.ready_at = None
            log.info("role %s stopped", done.role)
        elif done.error:
            self._wanted.discard(done.role)
            self._failed(status, done.error, done.exit_code, now)
            log.error("role %s failed to start: %s", done.role, done.error)
            self._after_start_failure(done.role)
        else:
            status.enter(EngineState.READY)
            status.pid = done.pid
            status.ready_at = now
            status.last_used = now
            status.last_start_seconds = done.seconds
            status.last_error = ""
            status.exit_code = None
            status.failures = 0
            if self._pinned == done.role or any(w.role == done.role for w in self._waiters):
                # Loaded because someone asked: the role health and status now name. A
                # preload finishing later does not take that place.
                status.chosen_at = now
            self._wanted.discard(done.role)
            self._footprints[done.role].load_seconds = done.seconds
            if done.pid is not None:
                measuring = sizing.measure(
                    done.role, self.roles[done.role], done.pid, done.seconds, self._database
                )
                self._effects.size_later(measuring, f"measure-{done.role}")
            self._effects.watch(done.role)
            started = self._switch_started.pop(done.role, None)
            m = self._metrics
            m.child(m.swaps, done.role).inc()
            m.child(m.swap_duration, done.role).observe(
                now - started if started is not None else done.seconds
            )
            log.info("role %s ready in %.2f s (pid %s)", done.role, done.seconds, done.pid)
            if self._pinned == done.role:
                self._pinned = None
            self._answer_switches(
                done.role, {"status": "ready", "role": done.role, "seconds": round(done.seconds, 3)}
            )
        self._effects.publish(done.role)
        self._answer_unloads()

    def _apply_exit(self, exited: Exited) -> None:
        status = self._status[exited.role]
        # A sleeping engine is watched too: one that dies asleep is failed now, not at its wake.
        watched = (EngineState.READY, EngineState.SLEEPING)
        if (
            exited.generation != self._effects.generation[exited.role]
            or status.state not in watched
        ):
            return
        error = f"engine exited unexpectedly with code {exited.code}" + (
            f"; log: {exited.detail}" if exited.detail else ""
        )
        self._failed(status, error, exited.code, time.monotonic())
        self._effects.forget_watcher(exited.role)
        log.error(
            "role %s crashed (exit code %s); restart on the next request", exited.role, exited.code
        )
        self._effects.publish(exited.role)

    def _failed(self, status: EngineStatus, error: str, code: int | None, now: float) -> None:
        """A start failed or a ready engine died: retried after a growing backoff."""
        status.enter(EngineState.FAILED)
        status.pid = None
        status.last_error = error
        status.exit_code = code
        status.failures += 1
        status.retry_at = now + backoff(
            status.failures,
            self._cfg.restart_backoff_seconds,
            self._cfg.restart_backoff_max_seconds,
        )
        self._metrics.child(self._metrics.engine_failures, status.role).inc()

    def _after_start_failure(self, role: str) -> None:
        """Queued requests move to a fallback role if there is one; otherwise they get the error."""
        status = self._status[role]
        fallback = pick_fallback(
            role, self.roles, lambda r: self._status[r].state is not EngineState.FAILED
        )
        for waiter in self._waiters:
            if waiter.role != role or waiter.future.done():
                continue
            if fallback is not None:
                waiter.role = fallback
                waiter.note = f"role {role} failed to start; served by {fallback}"
            else:
                waiter.future.set_exception(
                    EngineUnavailable(f"role {role!r} failed to start: {status.last_error}")
                )
        if self._pinned == role:
            self._pinned = None
        self._answer_switches(role, {"status": "failed", "role": role, "error": status.last_error})

    def _answer_switches(self, role: str, result: dict[str, Any]) -> None:
        for pending in self._switches:
            if pending.role == role:
                pending.answer(result)
        self._switches = [p for p in self._switches if not p.future.done()]

    def _answer_unloads(self) -> None:
        remaining = []
        for roles, future in self._unloads:
            if all(not self._status[r].alive for r in roles):
                self._unloading -= roles
                if not future.done():
                    future.set_result(None)
            else:
                remaining.append((roles, future))
        self._unloads = remaining

    # --- planning (pure, in scheduler.py) and applying its plan --------------------------------

    def _snapshot(self) -> scheduler.Snapshot:
        return scheduler.Snapshot(
            self.roles,
            self.topology,
            self._cfg,
            self._status,
            [scheduler.Waiting(w.role, w.arrived, w.priority) for w in self._waiters],
            frozenset(self._effects.running),
            frozenset(self._draining),
            frozenset(self._unloading),
            self._pinned,
            lambda: self._resources().free_mb,
            frozenset(self._wanted),
            self._footprints,
            self._effects.sleepers,
            on_host=lambda: self._resources().vram_free_mb is None,
        )

    def _reconcile(self) -> None:
        now = self._planned_at = time.monotonic()
        self._waiters = [w for w in self._waiters if not w.future.done()]
        plan = scheduler.plan(self._snapshot(), now)
        self._grant(plan, now)
        for reason, fallback in plan.fallbacks:
            log.warning("%s: using fallback role %s", reason, fallback)
        for role, fallback, reason in plan.retargets:
            for pending in self._switches:
                if pending.role == role:
                    pending.fall_back(fallback, reason)
        for role, result in plan.answers:
            self._answer_switches(role, result)
        self._pinned = plan.pinned
        for role in plan.switch_started:
            self._switch_started.setdefault(role, now)
        self._draining = plan.draining
        for role in plan.aborts:
            self._effects.abort_start(role)
        for why in plan.evictions:
            log.info("%s", why)
        for role, idle in plan.idle:
            log.info("role %s idle for %.0f s: unloading", role, idle)
        for role, idle in plan.returns:
            log.info("no requests for %.0f s: back to the default role %s", idle, role)
        for role in plan.stops:
            self._effects.stop(role)
        for role in plan.sleeps:
            self._effects.sleep(role)
        for role in plan.starts:
            self._start(role)
        for name in self.roles:
            self._metrics.child(self._metrics.queue_depth, name).set(self.queue_depth(name))
        self._effects.progress.observe(self._waiters, self._switches, self._pinned)

    def _grant(self, plan: scheduler.Plan, now: float) -> None:
        """Answer the waiters the plan decided on: moved, refused, or given a lease."""
        waiters = self._waiters
        for index, (role, note) in plan.redirects.items():
            waiters[index].role, waiters[index].note = role, note
        for index, reason in plan.refusals.items():
            waiters[index].future.set_exception(EngineUnavailable(reason))
        for index in plan.grants:
            waiter = waiters[index]
            status = self._status[waiter.role]
            status.inflight += 1
            status.last_used = now
            waited = now - waiter.arrived
            self._metrics.child(self._metrics.engine_wait, waiter.role).observe(waited)
            waiter.future.set_result(Lease(waiter.role, waiter.requested, waiter.note, waited))
        self._waiters = [w for w in waiters if not w.future.done()]

    def _start(self, role: str) -> None:
        self._switch_started.setdefault(role, time.monotonic())
        self._effects.start(role)

    async def _shutdown(self) -> None:
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(EngineUnavailable("the gateway is shutting down"))
        await self._effects.stop_everything()
        for pending in self._switches:
            pending.answer({"status": "stopped"})
        for _, unload in self._unloads:
            if not unload.done():
                unload.set_result(None)
