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
from collections.abc import Mapping
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


S = EngineState
# Every move the supervisor may make, and why it makes it.
TRANSITIONS: Mapping[EngineState, frozenset[EngineState]] = {
    # Started for a request, a switch or a preload.
    S.STOPPED: frozenset({S.STARTING}),
    # Healthy; the start failed; stopped during its start (a swap or unload aborts it).
    S.STARTING: frozenset({S.READY, S.FAILED, S.STOPPING}),
    # Evicted, unloaded or idle; crashed.
    S.READY: frozenset({S.STOPPING, S.FAILED}),
    # Gone. READY and FAILED: the start had already finished (or failed) when the owner
    # aborted it, and its outcome arrives after the abort.
    S.STOPPING: frozenset({S.STOPPED, S.READY, S.FAILED}),
    # Retried after the backoff (or at once for a switch); marked stopped at shutdown.
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
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
