"""Rate-limit state in this process: the policy applied to a dict."""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.ratelimit.admission import Admission
from gateway.ratelimit.policy import Clock, Scope, ScopeState, check, fresh, refilled, settle

# ----------------------------------------------------------------------- in-memory backend


class MemoryBackend:
    """Bucket state in a dict of this process.

    Used only from the event loop thread, and ``admit`` never awaits between reading and
    writing the state, so every decision is atomic without a lock: with ``concurrent: N``
    exactly N of M simultaneous requests get in.
    """

    # Sweep idle scopes once the table has grown past this (agent ids come from callers).
    _SWEEP_FLOOR = 4096

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[tuple[str, str], ScopeState] = {}
        self._sweep_at = self._SWEEP_FLOOR

    async def admit(self, scopes: Sequence[Scope], est_tokens: int) -> Admission:
        return self.admit_now(scopes, est_tokens)

    def admit_now(self, scopes: Sequence[Scope], est_tokens: int) -> Admission:
        now = self._clock()
        states = self._states
        after: list[ScopeState] = []
        denied_at, wait, denied_limit = -1, 0.0, None
        for kind, name, limits in scopes:
            state, retry_after, limit = check(
                limits, states.get((kind, name)) or fresh(limits, now), est_tokens, now
            )
            # The most constraining scope is the one asking for the longest wait.
            if limit is not None and (denied_at < 0 or retry_after > wait):
                denied_at, wait, denied_limit = len(after), retry_after, limit
            after.append(state)
        if denied_at >= 0:
            # All or nothing: nothing is written; the levels shown are those before the request.
            shown = [
                refilled(s.limits, states.get((s.kind, s.name)) or fresh(s.limits, now), now)
                for s in scopes
            ]
            return Admission(scopes, est_tokens, shown, wait, denied_at, denied_limit)
        for (kind, name, _), state in zip(scopes, after, strict=True):
            states[kind, name] = state
        if len(states) > self._sweep_at:
            self._sweep(now)
        return Admission(scopes, est_tokens, after, backend=self)

    async def release(self, admission: Admission, actual_tokens: int | None) -> None:
        self.release_nowait(admission, actual_tokens)

    def release_nowait(self, admission: Admission, actual_tokens: int | None) -> bool:
        now = self._clock()
        delta = 0 if actual_tokens is None else actual_tokens - admission.est_tokens
        states = self._states
        for kind, name, limits in admission.scopes:
            if limits.concurrent > 0 or (delta and limits.tpm > 0):
                state = states.get((kind, name)) or fresh(limits, now)
                states[kind, name] = settle(limits, state, delta, now)
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _sweep(self, now: float) -> None:
        """Forget scopes that are full and idle: they are the same as scopes never seen."""
        idle = [
            key
            for key, (_, _, updated_at, inflight) in self._states.items()
            if inflight == 0 and now - updated_at > 120.0
        ]
        for key in idle:
            del self._states[key]
        self._sweep_at = max(self._SWEEP_FLOOR, 2 * len(self._states))
