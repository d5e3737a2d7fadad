"""Engine states and the status record the supervisor keeps per role.

Only the supervisor's owner task writes these; everyone else reads snapshots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class EngineState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


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
        self.state = state
        self.since = time.time()
        self.changed_at = time.monotonic()

    @property
    def loaded(self) -> bool:
        """Holds memory: starting, ready or stopping."""
        return self.state in (EngineState.STARTING, EngineState.READY, EngineState.STOPPING)
