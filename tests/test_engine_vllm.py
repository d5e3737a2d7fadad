"""vLLM as an engine kind: evicted roles sleep instead of stopping, and wake on their next request.

vLLM cannot run here, so the engine is ``tests/fakes/vllm_server.py``: a real server process
that turnout spawns from the role's command, on a loopback port it picks, speaking vLLM's
OpenAI-compatible endpoints and its sleep mode (``/sleep``, ``/wake_up``, ``/is_sleeping``,
present only with ``VLLM_SERVER_DEV_MODE=1``, which the kind sets). The first tests are the
scheduler's decision alone (no process); the rest run a whole gateway.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import Engines, Role, from_mapping
from gateway.engines.builtin import builtin_kinds
from gateway.engines.placement import Placement
from gateway.engines.policy import Topology
from gateway.engines.process import ProcessDriver
from gateway.engines.scheduler import Snapshot, Waiting, plan
from gateway.engines.states import EngineState, EngineStatus
from gateway.engines.vllm import SleepingDriver, tensor_parallel
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway

ROOT = Path(__file__).resolve().parent.parent
S = EngineState
NOW = 1000.0
FAKE_VLLM = (sys.executable, "-m", "tests.fakes.vllm_server", "serve", "${MODEL}")
FAKE_VLLM_ARGS = ("--host", "${HOST}", "--port", "${PORT}", "--max-model-len", "${CTX}")
SLEEP_MODE = ("--enable-sleep-mode",)


def vllm_role(model: str, sleeps: bool = True, **fields: Any) -> dict[str, Any]:
    return {
        "engine": "vllm",
        # A Hugging Face repo id, as vLLM takes it: not a file turnout must find.
        "model": model,
        "command": [*FAKE_VLLM, *FAKE_VLLM_ARGS, *(SLEEP_MODE if sleeps else ())],
        # The engine process imports tests.fakes: run it from the checkout.
        "env": {"PYTHONPATH": str(ROOT)},
        "start_timeout_seconds": 60,
        **fields,
    }


# --- the decision, without processes -------------------------------------------------------------


def snapshot(states: dict[str, EngineState], waiting: str, **fields: Any) -> Snapshot:
    roles = {n: Role(engine="vllm", model=f"org/{n}") for n in states}
    engines = Engines(max_wait_seconds=10)
    return Snapshot(
        roles,
        Topology.build(roles, engines),
        engines,
        {n: EngineStatus(n, state=s, last_used=NOW - 5) for n, s in states.items()},
        [Waiting(waiting, NOW - 1)] if waiting else [],
        **fields,
    )


def test_an_evicted_role_that_can_sleep_is_put_to_sleep_not_stopped() -> None:
    decided = plan(
        snapshot({"big": S.READY, "small": S.STOPPED}, "small", sleepers=frozenset({"big"})), NOW
    )
    assert decided.sleeps == ["big"]
    assert decided.stops == []


def test_an_evicted_role_that_cannot_sleep_is_stopped() -> None:
    decided = plan(snapshot({"big": S.READY, "small": S.STOPPED}, "small"), NOW)
    assert decided.stops == ["big"]
    assert decided.sleeps == []


def test_a_sleeping_role_frees_its_slot_and_is_woken_by_a_start() -> None:
    states = {"big": S.SLEEPING, "small": S.READY}
    decided = plan(snapshot(states, "big", sleepers=frozenset({"big", "small"})), NOW)
    # small is evicted (to sleep) for big; big starts (a wake) once small is asleep.
    assert decided.sleeps == ["small"]
    decided = plan(snapshot({"big": S.SLEEPING, "small": S.SLEEPING}, "big"), NOW)
    assert decided.starts == ["big"]


def test_an_unload_stops_a_sleeping_role_for_good() -> None:
    states = {"big": S.SLEEPING, "small": S.READY}
    unload = frozenset({"big", "small"})
    decided = plan(snapshot(states, "", sleepers=unload, unloading=unload), NOW)
    assert sorted(decided.stops) == ["big", "small"]
    assert decided.sleeps == []


def test_sleeping_is_a_tier_between_ready_and_stopped() -> None:
    status = EngineStatus("big")
    # Evicted: asleep, holding no slot; woken by a start; stopped for good by an unload.
    for state in (S.STARTING, S.READY, S.STOPPING, S.SLEEPING, S.STARTING, S.READY):
        status.enter(state)
        assert status.state is state
    for state in (S.STOPPING, S.SLEEPING):
        status.enter(state)
    assert not status.loaded and status.alive
    status.enter(S.STOPPING)
    status.enter(S.STOPPED)
    assert not status.alive


def test_the_vllm_kind_is_built_in_and_takes_hub_model_names() -> None:
    kinds = builtin_kinds()
    assert "vllm" in kinds
    role = Role(engine="vllm", model="Qwen/Qwen3-0.6B", command=(sys.executable, "${MODEL}"))
    # A repo id is not a missing file: the role is not reported unable to start.
    assert kinds.missing_parts(role) == ""
    config = from_mapping({"roles": {"q": {"engine": "vllm", "model": "Qwen/Qwen3-0.6B"}}}, "t", {})
    assert config.roles["q"].upstream_model == "Qwen/Qwen3-0.6B"


def test_a_vllm_role_placed_on_two_gpus_shards_over_both() -> None:
    command = ["vllm", "serve", "org/m"]
    assert tensor_parallel(command, Placement((1, 3), (40, 40))) == ["--tensor-parallel-size", "2"]
    assert tensor_parallel(command, Placement((1,))) == []
    assert tensor_parallel([*command, "-tp", "4"], Placement((0, 1))) == []


# --- a whole gateway with fake vLLM processes ----------------------------------------------------


async def engine_status(gw: RunningGateway) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + "/engine/status") as response,
    ):
        body: dict[str, Any] = await response.json()
        return body


async def settled(gw: RunningGateway, role: str, state: str) -> dict[str, Any]:
    """The role's engine once it reaches ``state``: an evicted engine may still be going to
    sleep while the role that replaced it already serves (its start overlaps the sleep)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        engine: dict[str, Any] = (await engine_status(gw))["engines"][role]
        if engine["state"] == state or asyncio.get_running_loop().time() > deadline:
            return engine
        await asyncio.sleep(0.05)


async def is_sleeping(port: int) -> bool:
    """Asked of the engine itself, not of turnout."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/is_sleeping") as response,
    ):
        body = await response.json()
        return bool(body["is_sleeping"])


async def chat(gw: RunningGateway, role: str, text: str) -> str:
    reply = await gw.openai().chat.completions.create(
        model=role, messages=[{"role": "user", "content": text}]
    )
    return reply.choices[0].message.content or ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def two_vllm_roles(**small: Any) -> dict[str, Any]:
    return {"roles": {"big": vllm_role("org/big-model"), "small": vllm_role("org/small", **small)}}


async def test_an_evicted_vllm_role_sleeps_and_its_next_request_wakes_the_same_process() -> None:
    async with running_gateway(config_of(two_vllm_roles())) as gw:
        assert await chat(gw, "big", "ping") == "echo: ping"
        big = (await engine_status(gw))["engines"]["big"]
        assert big["engine"] == "vllm" and big["state"] == "ready"
        pid, port = big["pid"], big["port"]

        # small needs the one slot: big is put to sleep, its process kept.
        assert await chat(gw, "small", "hello") == "echo: hello"
        big = await settled(gw, "big", "sleeping")
        assert big["state"] == "sleeping"
        assert big["pid"] == pid and alive(pid)
        assert (await engine_status(gw))["loaded"] == ["small"]
        assert await is_sleeping(port)

        # big's next request wakes it: the same process serves, no cold start.
        reply = await gw.openai().chat.completions.create(
            model="big", messages=[{"role": "user", "content": "again"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in reply if c.choices])
        assert text.strip() == "echo: again"
        status = await engine_status(gw)
        assert status["engines"]["big"]["state"] == "ready"
        assert status["engines"]["big"]["pid"] == pid
        assert not await is_sleeping(port)
        assert (await settled(gw, "small", "sleeping"))["state"] == "sleeping"


async def test_switching_puts_the_current_vllm_role_to_sleep_and_unload_stops_it() -> None:
    async with running_gateway(config_of(two_vllm_roles())) as gw, aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/engine/switch/big?wait=true") as response:
            assert response.status == 200, await response.text()
        pid = (await engine_status(gw))["engines"]["big"]["pid"]
        async with s.post(gw.url + "/engine/switch/small?wait=true") as response:
            body = await response.json()
            assert response.status == 200 and body["from"] == "big", body
        assert (await settled(gw, "big", "sleeping"))["state"] == "sleeping"
        assert (await engine_status(gw))["engines"]["small"]["state"] == "ready"
        async with s.get(gw.url + "/engine/health") as response:
            assert (await response.json())["role"] == "small"

        # An explicit unload gives everything back: the sleeping process exits too.
        async with s.post(gw.url + "/engine/unload") as response:
            assert response.status == 200
        engines = (await engine_status(gw))["engines"]
        assert engines["big"]["state"] == "stopped" and engines["big"]["pid"] is None
        assert engines["small"]["state"] == "stopped"
        assert not alive(pid)


async def test_a_vllm_role_without_sleep_mode_is_stopped_when_evicted() -> None:
    async with running_gateway(config_of(two_vllm_roles(sleeps=False))) as gw:
        assert await chat(gw, "small", "one") == "echo: one"
        pid = (await engine_status(gw))["engines"]["small"]["pid"]
        assert await chat(gw, "big", "two") == "echo: two"
        small = await settled(gw, "small", "stopped")
        assert small["state"] == "stopped" and small["pid"] is None
        assert not alive(pid)


def fake_vllm_driver(
    session: aiohttp.ClientSession, log: Path, **env: str
) -> tuple[SleepingDriver, ProcessDriver, int]:
    """The driver the kind builds, by hand: here the test chooses the engine's environment."""
    port = free_port()
    role = Role(engine="vllm", model="org/m", env={"PYTHONPATH": str(ROOT), **env})
    command = [*FAKE_VLLM, *FAKE_VLLM_ARGS, *SLEEP_MODE]
    command = [c.replace("${MODEL}", "org/m").replace("${HOST}", "127.0.0.1") for c in command]
    command = [c.replace("${PORT}", str(port)).replace("${CTX}", "4096") for c in command]
    process = ProcessDriver("m", role, command, port, log, session)
    return SleepingDriver(process, f"http://127.0.0.1:{port}", role, session), process, port


async def test_a_vllm_without_its_sleep_endpoints_is_stopped_instead(tmp_path: Path) -> None:
    """Without VLLM_SERVER_DEV_MODE vLLM has no /sleep (404): the driver stops the engine."""
    async with aiohttp.ClientSession() as session:
        driver, process, _ = fake_vllm_driver(session, tmp_path / "m.log")
        pid = await driver.start()
        assert pid is not None
        try:
            assert await driver.sleep() is False
            assert process.pid is None and not alive(pid)
        finally:
            await driver.stop()


async def test_a_vllm_process_that_died_asleep_is_started_afresh(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        driver, _, port = fake_vllm_driver(session, tmp_path / "m.log", VLLM_SERVER_DEV_MODE="1")
        first = await driver.start()
        try:
            assert await driver.sleep() is True
            assert first is not None
            os.kill(first, 9)
            await asyncio.wait_for(driver.wait_exit(), 10)
            second = await driver.start()
            assert second is not None and second != first
            assert not await is_sleeping(port)
        finally:
            await driver.stop()


async def test_an_idle_vllm_role_sleeps_after_its_ttl() -> None:
    raw = {"roles": {"big": vllm_role("org/big-model", ttl_seconds=0.3)}}
    async with running_gateway(config_of(raw)) as gw:
        assert await chat(gw, "big", "ping") == "echo: ping"
        big = await settled(gw, "big", "sleeping")
        assert big["state"] == "sleeping" and alive(big["pid"])
        assert await chat(gw, "big", "pong") == "echo: pong"
        assert (await engine_status(gw))["engines"]["big"]["pid"] == big["pid"]


async def test_a_vllm_role_that_dies_asleep_shows_failed_at_once_and_serves_again() -> None:
    async with running_gateway(config_of(two_vllm_roles())) as gw:
        assert await chat(gw, "big", "ping") == "echo: ping"
        assert await chat(gw, "small", "hello") == "echo: hello"
        big = await settled(gw, "big", "sleeping")
        assert big["state"] == "sleeping"
        os.kill(big["pid"], signal.SIGKILL)
        # Seen when it happens, not at the next wake: the status stops saying "sleeping".
        big = await settled(gw, "big", "failed")
        assert big["state"] == "failed" and big["pid"] is None
        assert big["exit_code"] == -signal.SIGKILL and "exited unexpectedly" in big["last_error"]
        assert "big" not in (await engine_status(gw))["loaded"]
        # The next request starts it afresh (after the restart backoff).
        assert await chat(gw, "big", "again") == "echo: again"
        assert (await engine_status(gw))["engines"]["big"]["pid"] not in (None, big["pid"])
