"""Live bookkeeping per target: requests in flight and cooldown after failures.

The router reads this through ``TargetView`` snapshots; only the forwarder writes to it.
All of it runs on the event loop thread, so plain attributes need no lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from gateway.router import TargetView


class TargetState:
    __slots__ = ("consecutive_failures", "cooling_until", "inflight", "last_error")

    def __init__(self) -> None:
        self.inflight = 0
        self.cooling_until = 0.0
        self.consecutive_failures = 0
        self.last_error = ""


class TargetBook(Mapping[str, TargetView]):
    """Target key → live state, readable as the router's ``Mapping[str, TargetView]``."""

    def __init__(self, cooldown_seconds: float) -> None:
        self._cooldown = cooldown_seconds
        self._states: dict[str, TargetState] = {}

    def state(self, key: str) -> TargetState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = TargetState()
        return state

    def started(self, key: str) -> None:
        self.state(key).inflight += 1

    def finished(self, key: str) -> None:
        self.state(key).inflight -= 1

    def succeeded(self, key: str) -> None:
        state = self.state(key)
        if state.consecutive_failures:
            state.consecutive_failures = 0
            state.cooling_until = 0.0

    def failed(self, key: str, now: float, reason: str) -> None:
        state = self.state(key)
        state.consecutive_failures += 1
        state.cooling_until = now + self._cooldown
        state.last_error = reason

    def __getitem__(self, key: str) -> TargetView:
        state = self._states[key]
        return TargetView(state.inflight, state.cooling_until)

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)
