"""Loading progress without processes: which stage each role is at, and the events hub.

The stage a waiting client hears is a pure function of the supervisor's state
(``gateway/engines/progress.py``); the hub (``gateway/engines/events.py``) hands each change to
its readers. The same on real llama-server roles, through the relay, ``/engine/events`` and
``turnout switch``: ``test_engine_events.py``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import pytest

from gateway.engines.events import BACKLOG, EngineEvents, event
from gateway.engines.progress import Progress, report_stage, stages
from gateway.engines.states import EngineState, EngineStatus
from gateway.pipeline.progress import comment
from tests.gateway_server import config_of, running_gateway

S = EngineState


@dataclass
class Waiter:
    role: str
    requested: str


@dataclass
class Switch:
    role: str
    requested: str = ""


def statuses(**states: EngineState) -> dict[str, EngineStatus]:
    return {role: EngineStatus(role, state=state) for role, state in states.items()}


def test_a_request_for_a_stopped_role_hears_which_engine_is_being_stopped_for_it() -> None:
    shown = stages(
        statuses(fast=S.STOPPED, coder=S.STOPPING), [Waiter("fast", "fast")], [], None, {}
    )
    assert shown["fast"] == ("stopping", "coder", "")
    assert shown["coder"] == ("stopping", "coder", "")


def test_a_role_nobody_waits_for_is_only_stopped_even_while_others_stop() -> None:
    shown = stages(statuses(fast=S.STOPPED, coder=S.STOPPING), [], [], None, {})
    assert shown["fast"] == ("stopped", "fast", "")


def test_a_switch_target_waiting_for_room_with_nothing_stopping_is_queued() -> None:
    shown = stages(statuses(fast=S.STOPPED, coder=S.READY), [], [Switch("fast")], "fast", {})
    assert shown["fast"] == ("queued", "fast", "")
    assert shown["coder"] == ("ready", "coder", "")


def test_starting_then_the_stages_the_driver_reports() -> None:
    starting = statuses(fast=S.STARTING)
    assert stages(starting, [Waiter("fast", "fast")], [], None, {})["fast"][0] == "starting"
    assert stages(starting, [], [], None, {"fast": "loading"})["fast"][0] == "loading"
    restoring = stages(starting, [], [], None, {"fast": "restoring cache"})
    assert restoring["fast"][0] == "restoring cache"


def test_a_ready_role_with_requests_still_waiting_is_queued_else_ready() -> None:
    ready = statuses(fast=S.READY)
    assert stages(ready, [Waiter("fast", "fast")], [], None, {})["fast"][0] == "queued"
    assert stages(ready, [], [], None, {})["fast"][0] == "ready"


def test_a_request_moved_to_a_fallback_hears_so_on_its_own_role() -> None:
    shown = stages(
        statuses(huge=S.STOPPED, fast=S.STARTING), [Waiter("fast", "huge")], [], None, {}
    )
    assert shown["huge"] == ("falling back", "fast", "")
    assert shown["fast"][0] == "starting"
    switched = stages(
        statuses(huge=S.STOPPED, fast=S.STOPPED), [], [Switch("fast", "huge")], None, {}
    )
    assert switched["huge"] == ("falling back", "fast", "")


def test_a_failed_role_says_why() -> None:
    failed = statuses(broken=S.FAILED)
    failed["broken"].last_error = "exited with code 3"
    assert stages(failed, [], [], None, {})["broken"] == ("failed", "broken", "exited with code 3")


def test_events_read_as_sentences_and_comments_stay_on_one_line() -> None:
    assert event("fast", "stopped", "stopping", "coder").text == "stopping role coder"
    assert event("fast", "starting", "starting").text == "starting role fast"
    assert event("fast", "ready", "ready").text == "role fast ready"
    assert event("huge", "stopped", "falling back", "fast").text == (
        "role huge cannot be served: falling back to role fast"
    )
    broken = event("broken", "failed", "failed", error="log:\nabort\r\n")
    assert comment(broken) == b": turnout: role broken failed: log: abort\n\n"


async def test_subscribers_get_each_change_once_in_order_and_end_when_the_hub_closes() -> None:
    hub = EngineEvents()
    async with hub.subscribe() as reader:
        assert hub.publish(event("fast", "starting", "starting"))
        # The same again says nothing new: not published.
        assert not hub.publish(event("fast", "starting", "starting"))
        assert hub.publish(event("fast", "ready", "ready"))
        hub.close()
        seen = [await reader.next() for _ in range(3)]
    assert [e.stage if e else None for e in seen] == ["starting", "ready", None]
    assert [e.stage for e in hub.snapshot()] == ["ready"]
    # Late readers of a stopped gateway end at once.
    async with hub.subscribe() as late:
        assert await asyncio.wait_for(late.next(), 1) is None


async def test_a_slow_reader_loses_its_oldest_events_and_never_blocks_the_publisher() -> None:
    hub = EngineEvents()
    async with hub.subscribe() as reader:
        for n in range(BACKLOG + 10):
            hub.publish(event(f"role{n}", "stopped", "stopped"))
        first = await reader.next()
    assert first is not None and first.role == "role10"


async def test_recent_events_are_kept_for_a_reader_that_comes_late() -> None:
    hub = EngineEvents()
    hub.publish(event("fast", "stopped", "stopped"))
    later = time.perf_counter()
    await asyncio.sleep(0.01)
    hub.publish(event("fast", "starting", "starting"))
    assert [e.stage for e in hub.since(later)] == ["starting"]


async def test_driver_reports_reach_the_role_of_the_start_task_only() -> None:
    status = statuses(fast=S.STARTING, coder=S.READY)
    progress = Progress(status)
    progress.observe([Waiter("fast", "fast")], [], None)

    async def start() -> None:
        report_stage("loading")
        report_stage("restoring cache")

    async with progress.events.subscribe() as reader:
        loop = asyncio.get_running_loop()
        await loop.create_task(start(), context=progress.starting("fast"))
        # Outside a start task: nothing to report to.
        report_stage("loading")
        status["fast"].enter(S.READY)
        progress.observe([], [], None)
        seen = [await reader.next() for _ in range(3)]
    assert [(e.role, e.stage) for e in seen if e] == [
        ("fast", "loading"),
        ("fast", "restoring cache"),
        ("fast", "ready"),
    ]


async def test_a_report_from_an_aborted_start_is_dropped() -> None:
    status = statuses(fast=S.STOPPING)
    progress = Progress(status)

    async def start() -> None:
        report_stage("loading")

    await asyncio.get_running_loop().create_task(start(), context=progress.starting("fast"))
    assert progress.events.latest["fast"].stage == "stopping"


async def test_closing_publishes_the_last_states_then_ends_every_stream() -> None:
    status = statuses(fast=S.READY)
    progress = Progress(status)
    async with progress.events.subscribe() as reader:
        status["fast"].enter(S.STOPPING)
        status["fast"].enter(S.STOPPED)
        progress.close()
        seen = [await reader.next(), await reader.next()]
    assert seen[0] is not None and seen[0].stage == "stopped"
    assert seen[1] is None


async def test_engine_events_on_a_gateway_without_local_roles_is_a_404() -> None:
    raw = {
        "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
    }
    async with running_gateway(config_of(raw)) as gw, aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/engine/events") as response:
            assert response.status == 404
            body = await response.json()
    assert "no local roles" in body["error"]["message"]


async def test_a_role_whose_queue_empties_turns_ready_again_and_a_quiet_look_says_nothing() -> None:
    status = statuses(fast=S.READY)
    progress = Progress(status)
    async with progress.events.subscribe() as reader:
        progress.observe([Waiter("fast", "fast")], [], None)
        progress.observe([], [], None)
        progress.observe([], [], None)  # nothing changed: no event
        status["fast"].enter(S.STOPPING)
        progress.observe([], [], None)
        seen = [await reader.next() for _ in range(3)]
        with pytest.raises(TimeoutError):  # and nothing else was published
            await asyncio.wait_for(reader.next(), 0.05)
    assert [e.stage for e in seen if e] == ["queued", "ready", "stopping"]
