"""Engine states, the moves allowed between them, and the status record kept per role.

Only the supervisor's owner task writes these; everyone else reads snapshots. A move the
table does not list is a bug in the supervisor: ``EngineStatus.enter`` refuses it, logs it as
one, and raises ``IllegalTransition`` where bugs should be loud (tests set ``TURNOUT_DEBUG``;
so does Python's development mode).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.errors import IllegalTransition

log = logging.getLogger("turnout.engines")


class EngineState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    # Its process lives on but holds no accelerator memory (vLLM's sleep mode): not loaded,
    # and started again by waking it, far cheaper than a cold start.
    SLEEPING = "sleeping"


S = EngineState
# Every move the supervisor may make, and why it makes it.
TRANSITIONS: Mapping[EngineState, frozenset[EngineState]] = {
    # Started for a request, a switch or a preload.
    S.STOPPED: frozenset({S.STARTING}),
    # Healthy; the start failed; stopped during its start (a swap or unload aborts it).
    S.STARTING: frozenset({S.READY, S.FAILED, S.STOPPING}),
    # Evicted, unloaded or idle; crashed.
    S.READY: frozenset({S.STOPPING, S.FAILED}),
    # Gone, or asleep (an evicted engine that can sleep). READY and FAILED: the start had
    # already finished (or failed) when the owner aborted it, and its outcome arrives after.
    S.STOPPING: frozenset({S.STOPPED, S.SLEEPING, S.READY, S.FAILED}),
    # Retried after the backoff (or at once for a switch); marked stopped at shutdown.
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
    # Woken for a request or a switch; stopped for good by an unload; marked stopped at shutdown;
    # its process died while asleep.
    S.SLEEPING: frozenset({S.STARTING, S.STOPPING, S.STOPPED, S.FAILED}),
}


def allowed(old: EngineState, new: EngineState) -> bool:
    return new in TRANSITIONS[old]


def _strict() -> bool:
    return bool(os.environ.get("TURNOUT_DEBUG")) or sys.flags.dev_mode


@dataclass
class EngineStatus:
    role: str
    state: EngineState = EngineState.STOPPED
    pid: int | None = None
    # Wall-clock time of the last state change (for humans), monotonic for arithmetic.
    since: float = field(default_factory=time.time)
    changed_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    last_error: str = ""
    exit_code: int | None = None
    last_start_seconds: float | None = None
    # Consecutive failed starts or crashes: the restart backoff grows with them.
    failures: int = 0
    retry_at: float = 0.0
    inflight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    # Set while a swap waits for this role's requests to finish: no new ones are admitted.
    draining: bool = False
    # Monotonic time it last became the current role: switched to, or loaded for requests.
    chosen_at: float = 0.0

    def enter(self, state: EngineState) -> None:
        if not allowed(self.state, state):
            message = f"bug: role {self.role}: illegal engine state move {self.state} -> {state}"
            log.error(message)
            if _strict():
                raise IllegalTransition(message)
            return
        self.state = state
        self.since = time.time()
        self.changed_at = time.monotonic()

    @property
    def loaded(self) -> bool:
        """Holds memory: starting, ready or stopping."""
        return self.state in (EngineState.STARTING, EngineState.READY, EngineState.STOPPING)

    @property
    def alive(self) -> bool:
        """Has an engine that an unload must stop: loaded, or asleep."""
        return self.loaded or self.state is EngineState.SLEEPING


def by_recency(statuses: Iterable[EngineStatus]) -> list[str]:
    """Ready roles, most recently chosen first (then most recently loaded): with several
    loaded together, the first is the one just switched to, not the first in config order."""
    ready = [s for s in statuses if s.state is EngineState.READY]
    ready.sort(key=lambda s: (s.chosen_at, s.ready_at or 0.0), reverse=True)
    return [s.role for s in ready]
