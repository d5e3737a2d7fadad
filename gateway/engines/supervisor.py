"""The engine supervisor: one owner task that alone changes engine state.

Callers never look at state and then act on it (that is how swap races happen). They put a
message in the owner's inbox and await a future: ``acquire`` a role for one request,
``switch`` to a role, ``unload``. The owner applies messages one at a time, then reconciles:
it asks the pure functions in ``policy.py`` what should happen next (admit queued requests,
evict, start, stop) and launches the slow parts (spawning, health polling, stopping) as
operation tasks whose completion comes back through the same inbox.

Invariants the owner keeps:
- a role with requests in flight is never stopped (swaps and idle unloads wait for them);
- at most one start or stop per group at a time;
- a request is admitted only to a READY role that is not draining for a swap;
- every waiter is answered: a lease, a clear error, or its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Engines, Role
from gateway.engines.policy import (
    RoleView,
    Topology,
    backoff,
    evictions,
    fits,
    may_evict_now,
    next_to_load,
    pick_fallback,
)
from gateway.engines.process import EngineDriver, EngineStartError
from gateway.engines.resources import Resources
from gateway.engines.states import EngineState, EngineStatus
from gateway.errors import UpstreamError
from gateway.metrics import Metrics

log = logging.getLogger("turnout.engines")


class EngineUnavailable(UpstreamError):
    """A role could not be made ready for a request; another target may still serve it."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"


@dataclass(slots=True)
class Lease:
    """Permission to send one request to ``role``'s engine; release it when the answer is done."""

    role: str
    requested: str
    note: str = ""
    waited: float = 0.0


@dataclass(slots=True, eq=False)
class _Waiter:
    role: str
    requested: str
    arrived: float
    future: asyncio.Future[Lease]
    note: str = ""


@dataclass(slots=True)
class _Acquire:
    waiter: _Waiter


@dataclass(slots=True)
class _Release:
    role: str


@dataclass(slots=True)
class _Switch:
    role: str
    future: asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class _Unload:
    roles: tuple[str, ...]
    future: asyncio.Future[None]


@dataclass(slots=True)
class _OpDone:
    role: str
    kind: str  # "start" | "stop"
    pid: int | None = None
    error: str = ""
    exit_code: int | None = None
    cancelled: bool = False
    seconds: float = 0.0


@dataclass(slots=True)
class _Exited:
    role: str
    code: int
    generation: int
    detail: str = ""


@dataclass(slots=True)
class _Shutdown:
    future: asyncio.Future[None]


Message = _Acquire | _Release | _Switch | _Unload | _OpDone | _Exited | _Shutdown


@dataclass
class _Plan:
    """What one reconcile pass decided (effects are applied after planning)."""

    draining: set[str] = field(default_factory=set)
    stops: list[str] = field(default_factory=list)
    starts: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        roles: Mapping[str, Role],
        engines: Engines,
        drivers: Mapping[str, EngineDriver],
        metrics: Metrics,
        resources: Callable[[], Resources],
    ) -> None:
        self.roles = roles
        self._cfg = engines
        self._drivers = drivers
        self._metrics = metrics
        self._resources = resources
        self.topology = Topology.build(roles, engines)
        self._status = {name: EngineStatus(name) for name in roles}
        self._generation = dict.fromkeys(roles, 0)
        self._waiters: list[_Waiter] = []
        self._ops: dict[str, asyncio.Task[Any]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._switches: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self._unloads: list[tuple[set[str], asyncio.Future[None]]] = []
        self._unloading: set[str] = set()
        # Roles that take no new requests because a swap will evict them once theirs finish.
        self._draining: set[str] = set()
        self._pinned: str | None = None
        self._switch_started: dict[str, float] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._owner: asyncio.Task[None] | None = None
        for name in roles:
            self._publish(name)

    # --- the callers' side ------------------------------------------------------------------

    async def start(self) -> None:
        self._owner = asyncio.get_running_loop().create_task(self._run(), name="engine-supervisor")
        for name in self._cfg.preload:
            # Preloading must not hold up the gateway's start: nobody awaits these.
            self._inbox.put_nowait(_Switch(name, asyncio.get_running_loop().create_future()))

    async def stop(self) -> None:
        """Stop every engine (no orphans) and answer every waiter."""
        if self._owner is None or self._owner.done():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Shutdown(done))
        await done
        await self._owner

    async def acquire(self, role: str, requested: str | None = None, note: str = "") -> Lease:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lease] = loop.create_future()
        waiter = _Waiter(role, requested or role, time.monotonic(), future, note)
        self._inbox.put_nowait(_Acquire(waiter))
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
        self._inbox.put_nowait(_Release(lease.role))

    async def switch(self, role: str, wait: bool) -> dict[str, Any]:
        """Make ``role`` the loaded one (evicting its group peers once their requests finish)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Switch(role, future))
        if not wait:
            return {}
        return await asyncio.shield(future)

    async def unload(self, roles: tuple[str, ...]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Unload(roles or tuple(self.roles), future))
        await asyncio.shield(future)

    def status(self, role: str) -> EngineStatus:
        return self._status[role]

    def queue_depth(self, role: str) -> int:
        return sum(1 for w in self._waiters if w.role == role and not w.future.done())

    @property
    def pinned(self) -> str | None:
        return self._pinned

    # --- the owner task -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            wake = self._next_wake()
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
                if isinstance(item, _Shutdown):
                    await self._shutdown()
                    item.future.set_result(None)
                    return
                self._apply(item)
            try:
                self._reconcile()
            except Exception:
                # The owner must survive its own bugs: log, and keep answering.
                log.exception("engine supervisor reconcile failed")

    def _apply(self, message: Message) -> None:
        now = time.monotonic()
        if isinstance(message, _Acquire):
            self._waiters.append(message.waiter)
        elif isinstance(message, _Release):
            status = self._status[message.role]
            status.inflight -= 1
            status.last_used = now
        elif isinstance(message, _Switch):
            self._apply_switch(message)
        elif isinstance(message, _Unload):
            roles = {r for r in message.roles if r in self.roles}
            self._unloading |= roles
            if self._pinned in roles:
                self._pinned = None
            self._unloads.append((roles, message.future))
        elif isinstance(message, _OpDone):
            self._apply_done(message)
        elif isinstance(message, _Exited):
            self._apply_exit(message)

    def _apply_switch(self, message: _Switch) -> None:
        role = message.role
        # Last one wins: earlier switches still pending are answered as superseded, and a start
        # in progress for one of them is aborted.
        for other, future in self._switches:
            if other != role and not future.done():
                future.set_result({"status": "superseded", "role": other, "by": role})
        self._switches = [(r, f) for r, f in self._switches if not f.done()]
        previous = self._pinned
        if (
            previous is not None
            and previous != role
            and self._status[previous].state is EngineState.STARTING
        ):
            self._abort_start(previous)
        self._unloading.discard(role)
        status = self._status[role]
        if status.state is EngineState.READY and not self._must_make_room(role):
            message.future.set_result({"status": "ready", "role": role, "already": True})
            self._pinned = None
            return
        self._pinned = role
        self._switch_started.setdefault(role, time.monotonic())
        self._switches.append((role, message.future))

    def _must_make_room(self, role: str) -> bool:
        """A ready role still has peers to evict when its group was over-full (e.g. after a config change)."""
        views = self._views(time.monotonic())
        victims = evictions(role, views, self.topology)
        return bool(victims)

    def _apply_done(self, done: _OpDone) -> None:
        self._ops.pop(done.role, None)
        status = self._status[done.role]
        now = time.monotonic()
        if done.kind == "stop" or done.cancelled:
            status.enter(EngineState.STOPPED)
            status.pid = None
            status.ready_at = None
            log.info("role %s stopped", done.role)
        elif done.error:
            status.enter(EngineState.FAILED)
            status.pid = None
            status.last_error = done.error
            status.exit_code = done.exit_code
            status.failures += 1
            status.retry_at = now + backoff(
                status.failures,
                self._cfg.restart_backoff_seconds,
                self._cfg.restart_backoff_max_seconds,
            )
            log.error("role %s failed to start: %s", done.role, done.error)
            self._metrics.child(self._metrics.engine_failures, done.role).inc()
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
            self._watch(done.role)
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
        self._publish(done.role)
        self._answer_unloads()

    def _apply_exit(self, exited: _Exited) -> None:
        status = self._status[exited.role]
        if (
            exited.generation != self._generation[exited.role]
            or status.state is not EngineState.READY
        ):
            return
        status.enter(EngineState.FAILED)
        status.pid = None
        status.exit_code = exited.code
        status.last_error = f"engine exited unexpectedly with code {exited.code}" + (
            f"; log: {exited.detail}" if exited.detail else ""
        )
        status.failures += 1
        status.retry_at = time.monotonic() + backoff(
            status.failures,
            self._cfg.restart_backoff_seconds,
            self._cfg.restart_backoff_max_seconds,
        )
        self._watchers.pop(exited.role, None)
        self._metrics.child(self._metrics.engine_failures, exited.role).inc()
        log.error(
            "role %s crashed (exit code %s); restart on the next request", exited.role, exited.code
        )
        self._publish(exited.role)

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
        for other, future in self._switches:
            if other == role and not future.done():
                future.set_result(result)
        self._switches = [(r, f) for r, f in self._switches if not f.done()]

    def _answer_unloads(self) -> None:
        remaining = []
        for roles, future in self._unloads:
            if all(not self._status[r].loaded for r in roles):
                self._unloading -= roles
                if not future.done():
                    future.set_result(None)
            else:
                remaining.append((roles, future))
        self._unloads = remaining

    # --- planning -------------------------------------------------------------------------------

    def _views(self, now: float) -> dict[str, RoleView]:
        waiting: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for w in self._waiters:
            waiting[w.role] = waiting.get(w.role, 0) + 1
            oldest[w.role] = max(oldest.get(w.role, 0.0), now - w.arrived)
        return {
            name: RoleView(
                loaded=s.loaded,
                ready=s.state is EngineState.READY,
                busy=s.state in (EngineState.STARTING, EngineState.STOPPING),
                inflight=s.inflight,
                waiting=waiting.get(name, 0),
                oldest_wait=oldest.get(name, 0.0),
                last_used=s.last_used,
                memory_mb=self.roles[name].memory_mb,
            )
            for name, s in self._status.items()
        }

    def _reconcile(self) -> None:
        now = time.monotonic()
        self._waiters = [w for w in self._waiters if not w.future.done()]
        # Admit before planning: a role that just became ready serves the requests it was
        # loaded for before any eviction is considered. Planning first would let a starving
        # peer evict it at once, and two starving roles would then swap forever (livelock).
        self._admit(self._draining | self._unloading, now)
        views = self._views(now)
        plan = _Plan(draining=set(self._unloading))
        self._plan_loads(views, plan, now)
        for role in sorted(self._unloading):
            status = self._status[role]
            if status.state is EngineState.STARTING:
                self._abort_start(role)
            elif status.loaded and status.inflight == 0 and role not in self._ops:
                plan.stops.append(role)
        self._plan_idle_unloads(views, plan, now)
        # A decided swap keeps its victims draining across passes (see _plan_loads); roles no
        # longer wanted out take requests again right away.
        self._draining = plan.draining - self._unloading
        self._admit(self._draining | self._unloading, now)
        for role in dict.fromkeys(plan.stops):
            self._launch_stop(role)
        for role in plan.starts:
            self._launch_start(role)
        for name in self.roles:
            self._metrics.child(self._metrics.queue_depth, name).set(self.queue_depth(name))

    def _group_busy(self, role: str, overlap: bool = False) -> bool:
        """A start or stop is running in the group. With ``overlap``, peers' stops don't count."""
        if role in self._ops:
            return True
        return any(
            p in self._ops and not (overlap and self._status[p].state is EngineState.STOPPING)
            for p in self.topology.peers(role)
        )

    def _fits_alongside(self, target: str) -> bool:
        """Can ``target`` start while its evicted peers are still exiting?

        Only with a memory estimate that fits in what is free right now (the victims still
        hold theirs): then the new engine loads during the old one's shutdown instead of after
        it, which takes the old engine's stop time (tens of ms to seconds) off every swap.
        """
        need = self.roles[target].memory_mb
        return need > 0 and fits(need, self._resources().free_mb, 0)

    def _blocked(self, role: str, now: float) -> bool:
        status = self._status[role]
        return status.state is EngineState.FAILED and now < status.retry_at

    def _plan_loads(self, views: dict[str, RoleView], plan: _Plan, now: float) -> None:
        claimed: set[str] = set()
        # An explicit switch skips the restart backoff: a person asked for it just now.
        pinned = self._pinned
        for target in next_to_load(views, pinned, lambda r: r != pinned and self._blocked(r, now)):
            group = self.topology.group_of.get(target, target)
            if group in claimed or self._status[target].state in (
                EngineState.STARTING,
                EngineState.STOPPING,
            ):
                continue
            claimed.add(group)
            victims = evictions(target, views, self.topology)
            if victims is None:
                self._fail_waiters(target, "its group is full of persistent roles")
                continue
            if not self._fits_or_redirect(target, victims):
                continue
            # Once decided, a swap stays decided: the victims keep draining even though their
            # queue refills, or a steady stream for them would starve the target for ever.
            decided = bool(victims) and all(v in self._draining for v in victims)
            urgent = target == self._pinned
            if not decided and not may_evict_now(
                target, victims, views, self._cfg.max_wait_seconds, urgent
            ):
                continue
            # From here the swap is decided: no new requests for the victims until it is done.
            plan.draining.update(victims)
            if any(views[v].inflight for v in victims):
                continue
            overlap = bool(victims) and self._fits_alongside(target)
            if self._group_busy(target, overlap):
                continue
            plan.stops.extend(v for v in victims if self._status[v].state is EngineState.READY)
            if not victims or overlap:
                plan.starts.append(target)

    def _fits_or_redirect(self, target: str, victims: list[str]) -> bool:
        need = self.roles[target].memory_mb
        if need <= 0:
            return True
        free = self._resources().free_mb
        freed = sum(self.roles[v].memory_mb for v in victims)
        if fits(need, free, freed):
            return True

        def fits_instead(other: str) -> bool:
            return fits(
                self.roles[other].memory_mb,
                free,
                freed + (need if self._status[target].loaded else 0),
            )

        fallback = pick_fallback(target, self.roles, fits_instead)
        reason = f"role {target} needs {need} MB, {free + freed} MB available"
        if fallback is None:
            self._fail_waiters(target, reason)
            if self._pinned == target:
                self._pinned = None
            self._answer_switches(target, {"status": "failed", "role": target, "error": reason})
            return False
        log.warning("%s: using fallback role %s", reason, fallback)
        for waiter in self._waiters:
            if waiter.role == target:
                waiter.role = fallback
                waiter.note = f"{reason}; served by {fallback}"
        if self._pinned == target:
            self._answer_switches(
                target,
                {"status": "fallback", "role": fallback, "requested": target, "reason": reason},
            )
            self._pinned = fallback
            self._switch_started.setdefault(fallback, time.monotonic())
        return False

    def _fail_waiters(self, role: str, reason: str) -> None:
        for waiter in self._waiters:
            if waiter.role == role and not waiter.future.done():
                waiter.future.set_exception(
                    EngineUnavailable(f"role {role!r} cannot be loaded: {reason}")
                )

    def _plan_idle_unloads(self, views: dict[str, RoleView], plan: _Plan, now: float) -> None:
        for name, role in self.roles.items():
            view = views[name]
            if (
                role.ttl_seconds > 0
                and view.ready
                and view.inflight == 0
                and view.waiting == 0
                and name not in self.topology.persistent
                and name not in self._ops
                and now - view.last_used >= role.ttl_seconds
            ):
                log.info("role %s idle for %.0f s: unloading", name, now - view.last_used)
                plan.stops.append(name)

    def _admit(self, draining: set[str], now: float) -> None:
        for waiter in self._waiters:
            status = self._status[waiter.role]
            if (
                status.state is not EngineState.READY
                or waiter.role in draining
                or waiter.future.done()
            ):
                continue
            status.inflight += 1
            status.last_used = now
            waited = now - waiter.arrived
            self._metrics.child(self._metrics.engine_wait, waiter.role).observe(waited)
            waiter.future.set_result(Lease(waiter.role, waiter.requested, waiter.note, waited))
        self._waiters = [w for w in self._waiters if not w.future.done()]

    def _next_wake(self) -> float | None:
        """When the owner must look again even if no message arrives."""
        now = time.monotonic()
        times: list[float] = []
        for name, role in self.roles.items():
            status = self._status[name]
            if role.ttl_seconds > 0 and status.state is EngineState.READY and status.inflight == 0:
                times.append(status.last_used + role.ttl_seconds)
            if status.state is EngineState.FAILED and any(w.role == name for w in self._waiters):
                times.append(status.retry_at)
        for waiter in self._waiters:
            times.append(waiter.arrived + self._cfg.max_wait_seconds)
        future = [t for t in times if t > now - 1.0]
        return min(future) if future else None

    # --- effects --------------------------------------------------------------------------------

    def _launch_start(self, role: str) -> None:
        status = self._status[role]
        status.enter(EngineState.STARTING)
        self._switch_started.setdefault(role, time.monotonic())
        self._publish(role)
        log.info("role %s starting", role)
        started = time.monotonic()
        task = asyncio.get_running_loop().create_task(
            self._drivers[role].start(), name=f"start-{role}"
        )
        # A done-callback, not code after the await: it also fires for a task cancelled before
        # it ever ran, so every start is answered exactly once.
        task.add_done_callback(
            lambda t: self._inbox.put_nowait(_start_outcome(role, t, time.monotonic() - started))
        )
        self._ops[role] = task

    def _launch_stop(self, role: str) -> None:
        status = self._status[role]
        if status.state is EngineState.STARTING:
            self._abort_start(role)
            return
        status.enter(EngineState.STOPPING)
        self._publish(role)
        self._unwatch(role)
        task = asyncio.get_running_loop().create_task(
            self._drivers[role].stop(), name=f"stop-{role}"
        )
        task.add_done_callback(lambda t: self._inbox.put_nowait(_stop_outcome(role, t)))
        self._ops[role] = task

    def _abort_start(self, role: str) -> None:
        """Stop during start: cancelling the start op makes its driver kill what it spawned."""
        op = self._ops.get(role)
        if op is not None:
            op.cancel()
        self._status[role].enter(EngineState.STOPPING)
        self._publish(role)

    def _watch(self, role: str) -> None:
        """Turn an engine's unexpected exit into a message for the owner."""
        self._generation[role] += 1
        generation = self._generation[role]
        driver = self._drivers[role]

        async def watch() -> None:
            code = await driver.wait_exit()
            self._inbox.put_nowait(_Exited(role, code, generation, driver.exit_detail()))

        self._watchers[role] = asyncio.get_running_loop().create_task(watch(), name=f"watch-{role}")

    def _unwatch(self, role: str) -> None:
        self._generation[role] += 1
        watcher = self._watchers.pop(role, None)
        if watcher is not None:
            watcher.cancel()

    async def _shutdown(self) -> None:
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(EngineUnavailable("the gateway is shutting down"))
        for op in list(self._ops.values()):
            op.cancel()
        await asyncio.gather(*self._ops.values(), return_exceptions=True)
        for role in self.roles:
            self._unwatch(role)
        await asyncio.gather(*(self._stop_quietly(r) for r in self.roles))
        for role, status in self._status.items():
            status.enter(EngineState.STOPPED)
            status.pid = None
            self._publish(role)
        for _, future in self._switches:
            if not future.done():
                future.set_result({"status": "stopped"})
        for _, unload in self._unloads:
            if not unload.done():
                unload.set_result(None)

    async def _stop_quietly(self, role: str) -> None:
        with contextlib.suppress(Exception):
            await self._drivers[role].stop()

    def _publish(self, role: str) -> None:
        """Every state change is visible as a metric (and in /engine/status, which reads status)."""
        state = self._status[role].state
        for candidate in EngineState:
            self._metrics.child(self._metrics.engine_state, role, candidate.value).set(
                1 if candidate is state else 0
            )


def _start_outcome(role: str, task: asyncio.Task[int | None], seconds: float) -> _OpDone:
    done = _OpDone(role, "start", seconds=seconds)
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


def _stop_outcome(role: str, task: asyncio.Task[None]) -> _OpDone:
    if not task.cancelled() and task.exception() is not None:
        log.error("stopping role %s failed: %r", role, task.exception())
    return _OpDone(role, "stop")
