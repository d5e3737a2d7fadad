"""Loading progress: the stage each role is at, told to whoever waits for it.

``stages`` is pure: from the roles' states, who waits for which role, and which engines are
being stopped, it says per role what a client waiting for it should hear (queued, stopping X,
starting Y, loading, restoring cache, ready, or falling back to Z). ``Progress`` is the
supervisor's side: its owner task calls ``observe`` after each reconcile and the changes go out
as ``events.EngineEvent``s.

Two stages only the driver can see: the engine answers but still loads its model ("loading"),
and its saved KV cache is being read back ("restoring cache"). Drivers say so with
``report_stage``, which finds the role through the start task's context (``Progress.starting``
makes it): no driver, built-in or a plugin's, takes a new parameter, and one that never
reports simply goes from "starting" to "ready".
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol

from gateway.engines.events import EngineEvents, Stage, event
from gateway.engines.states import EngineState, EngineStatus

# Set in a start task's context only (see ``Progress.starting``).
_REPORTER: contextvars.ContextVar[Callable[[Stage], None] | None] = contextvars.ContextVar(
    "turnout_engine_stage", default=None
)

# The stages a driver may report while its engine starts.
DRIVER_STAGES: frozenset[Stage] = frozenset({"loading", "restoring cache"})


def report_stage(stage: Stage) -> None:
    """Called by a driver inside its ``start``: the engine reached ``stage``. Outside a start
    task (a driver used on its own, in a test) it does nothing."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(stage)


class Waiting(Protocol):
    """A queued request as the supervisor holds it (``inbox.Waiter``): the role it waits
    for, and the role it asked for (another when it was moved to a fallback)."""

    role: str
    requested: str


class Switching(Protocol):
    """A pending switch (``inbox.PendingSwitch``): ``requested`` is set once it fell back."""

    role: str
    requested: str


# (stage, subject, error) for one role.
Shown = tuple[Stage, str, str]


def stage_of(
    role: str,
    status: EngineStatus,
    queued: bool,
    wanted: bool,
    stopping: Sequence[str],
    fallback: str | None,
    detail: Stage | None,
) -> Shown:
    """What a client waiting for ``role`` hears. ``queued``: requests wait for it; ``wanted``:
    they do, or a switch or preload does; ``stopping``: engines being stopped now."""
    state = status.state
    if fallback and state is not EngineState.READY:
        return "falling back", fallback, ""
    if state is EngineState.STARTING:
        return detail or "starting", role, ""
    if state is EngineState.STOPPING:
        return "stopping", role, ""
    if state is EngineState.READY:
        return ("queued" if queued else "ready"), role, ""
    if state is EngineState.FAILED:
        return "failed", role, status.last_error
    if wanted:
        # Not loaded yet: what it waits for is room, made by stopping others.
        others = [r for r in stopping if r != role]
        return ("stopping", ", ".join(others), "") if others else ("queued", role, "")
    return ("sleeping" if state.value == "sleeping" else "stopped"), role, ""


def stages(
    statuses: Mapping[str, EngineStatus],
    waiters: Iterable[Waiting],
    switches: Iterable[Switching],
    pinned: str | None,
    details: Mapping[str, Stage],
) -> dict[str, Shown]:
    queued = {w.role for w in waiters}
    wanted = queued | {s.role for s in switches}
    if pinned is not None:
        wanted.add(pinned)
    fallbacks = {w.requested: w.role for w in waiters if w.requested != w.role}
    fallbacks.update({s.requested: s.role for s in switches if s.requested})
    stopping = [r for r, s in statuses.items() if s.state is EngineState.STOPPING]
    return {
        role: stage_of(
            role,
            status,
            role in queued,
            role in wanted,
            stopping,
            fallbacks.get(role),
            details.get(role),
        )
        for role, status in statuses.items()
    }


class Progress:
    """Publishes each role's stage as it changes; read by the relay and ``/engine/events``."""

    def __init__(self, statuses: Mapping[str, EngineStatus]) -> None:
        self.events = EngineEvents()
        self._statuses = statuses
        self._details: dict[str, Stage] = {}
        # What was last published per role, with its state: unchanged roles cost no event.
        self._shown: dict[str, tuple[EngineState, Shown]] = {}
        # The states (and failure counts) when nobody waited at the last look: with requests
        # served at once, most reconciles find exactly that again and cost one tuple here.
        self._quiet: tuple[tuple[EngineState, int], ...] | None = None
        self.observe((), (), None)

    def observe(
        self, waiters: Collection[Waiting], switches: Collection[Switching], pinned: str | None
    ) -> None:
        """After each reconcile, in the owner task: publish what changed."""
        statuses = self._statuses
        if not waiters and not switches and pinned is None and not self._details:
            quiet = tuple((s.state, s.failures) for s in statuses.values())
            if quiet == self._quiet:
                return
            self._quiet = quiet
        else:
            self._quiet = None
        for role in [r for r in self._details if statuses[r].state is not EngineState.STARTING]:
            del self._details[role]
        for role, shown in stages(statuses, waiters, switches, pinned, self._details).items():
            self._publish(role, shown)

    def starting(self, role: str) -> contextvars.Context:
        """The context to run ``role``'s start task in: its driver's reports reach ``role``."""
        context = contextvars.copy_context()
        context.run(_REPORTER.set, functools.partial(self._report, role))
        return context

    def close(self) -> None:
        """At shutdown, after every engine stopped: the last states, then every stream ends."""
        self.observe((), (), None)
        self.events.close()

    def _report(self, role: str, stage: Stage) -> None:
        # From the start task, not the owner: a stage is no engine state, only what to tell
        # the waiting, so it need not queue behind the owner's messages. A report from a start
        # that was aborted meanwhile (its role no longer starting) is dropped.
        if stage not in DRIVER_STAGES or self._statuses[role].state is not EngineState.STARTING:
            return
        self._details[role] = stage
        self._publish(role, (stage, role, ""))

    def _publish(self, role: str, shown: Shown) -> None:
        state = self._statuses[role].state
        if self._shown.get(role) == (state, shown):
            return
        self._shown[role] = (state, shown)
        stage, subject, error = shown
        self.events.publish(event(role, state.value, stage, subject, error))
