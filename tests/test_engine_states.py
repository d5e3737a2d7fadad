"""The engine state table: the moves the supervisor makes are allowed, any other is a bug."""

from __future__ import annotations

import logging

import pytest

from gateway.engines.states import TRANSITIONS, EngineState, EngineStatus, allowed
from gateway.errors import IllegalTransition

S = EngineState


def test_every_state_has_a_row_and_a_way_back_to_stopped() -> None:
    assert set(TRANSITIONS) == set(EngineState)
    for state in EngineState:
        # Following allowed moves, every state reaches STOPPED (nothing is a dead end).
        seen, frontier = {state}, [state]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert S.STOPPED in seen, state


def test_the_life_of_an_engine_is_a_legal_path() -> None:
    status = EngineStatus("coder")
    for state in (S.STARTING, S.READY, S.STOPPING, S.STOPPED, S.STARTING, S.FAILED, S.STARTING):
        status.enter(state)
        assert status.state is state
    # Aborted during its start, then gone.
    status.enter(S.STOPPING)
    status.enter(S.STOPPED)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.STOPPED, S.READY),  # ready without a start
        (S.STOPPED, S.STOPPING),
        (S.STOPPED, S.STOPPED),
        (S.READY, S.STARTING),  # started twice
        (S.READY, S.STOPPED),  # stopped without stopping (nobody waited for it)
        (S.FAILED, S.READY),
        (S.STARTING, S.STARTING),
    ],
)
def test_an_illegal_move_raises_in_tests_and_leaves_the_state(
    old: EngineState, new: EngineState, caplog: pytest.LogCaptureFixture
) -> None:
    assert not allowed(old, new)
    status = EngineStatus("coder", state=old)
    with caplog.at_level(logging.ERROR), pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
        status.enter(new)
    assert status.state is old
    assert f"bug: role coder: illegal engine state move {old} -> {new}" in caplog.text


def test_outside_debug_an_illegal_move_is_logged_and_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("TURNOUT_DEBUG", raising=False)
    status = EngineStatus("coder", state=S.READY)
    with caplog.at_level(logging.ERROR):
        status.enter(S.STARTING)
    assert status.state is S.READY
    assert "illegal engine state move ready -> starting" in caplog.text
