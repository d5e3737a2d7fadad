"""Scheduling decisions seen from outside, on real llama-server roles (issue 14's bugs).

Fallbacks for roles that do not fit memory, which role health and status name when groups keep
several loaded, persistent members loaded at start-up, and a failed role named the same way by
/engine/health and /engine/status. The decisions themselves are unit-tested without processes
in ``test_engine_scheduler.py``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.client.api import GatewayClient
from gateway.client.switch import follow
from tests.engines.engines import HELLO_TEXT
from tests.gateway_server import RunningGateway, config_of, running_gateway
from tests.test_engines import USER, engines_config, get, post, role, wait_health

pytestmark = pytest.mark.engine

# Far longer than a tiny model's load (about a second): a fallback that waits for it is a bug.
MAX_WAIT = 30


def huge_and_fast(models: dict[str, Path]) -> dict[str, Any]:
    return {
        "huge": role(models["tiny-toolcall"], memory_mb=10**9, fallback=["fast"]),
        "fast": role(models["tiny-hello"], memory_mb=64),
    }


async def test_switch_to_a_role_that_does_not_fit_starts_its_fallback_at_once(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    async with engines_config(
        huge_and_fast(tiny_models), log_dir=str(tmp_path), max_wait_seconds=MAX_WAIT
    ) as gw:
        status, body = await post(gw, "/engine/switch/huge")
        # The answer names what is really being loaded, and why.
        assert status == 202 and body["status"] == "switching"
        assert body["to"] == "fast" and body["requested"] == "huge"
        assert "needs 1000000000 MB" in body["reason"]
        # From idle, with no request coming: the fallback loads anyway and health turns ready.
        assert (await wait_health(gw, seconds=15))["role"] == "fast"
        _, engine = await get(gw, "/engine/status")
        assert engine["role"] == "fast" and engine["switching_to"] is None
        assert engine["engines"]["huge"]["state"] == "stopped"

        status, body = await post(gw, "/engine/switch/huge?wait=true")
        assert status == 503 and body["status"] == "fallback"
        assert (body["to"], body["requested"]) == ("fast", "huge")


async def test_turnout_switch_says_the_fallback_was_loaded_only_once_it_is(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    async with engines_config(
        huge_and_fast(tiny_models), log_dir=str(tmp_path), max_wait_seconds=MAX_WAIT
    ) as gw:
        client = GatewayClient(gw.url, timeout=30)
        outcome = await asyncio.to_thread(follow, client, "huge", 20.0, None)
        assert outcome["ok"] is False and outcome["status"] == "fallback"
        assert outcome["error"].startswith("huge cannot be loaded (role huge needs 1000000000 MB")
        assert outcome["error"].endswith("; fast was loaded instead")
        # ... and it was: the verdict arrives once fast is ready, not before it started.
        _, health = await get(gw, "/engine/health")
        assert health == {"state": "ready", "role": "fast"}


async def test_a_request_for_a_role_that_cannot_fit_falls_back_without_waiting_max_wait(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    async with engines_config(
        huge_and_fast(tiny_models), log_dir=str(tmp_path), max_wait_seconds=MAX_WAIT
    ) as gw:
        started = time.monotonic()
        reply = await gw.openai().chat.completions.with_raw_response.create(
            model="huge", messages=USER, max_tokens=32
        )
        waited = time.monotonic() - started
        assert reply.parse().choices[0].message.content == HELLO_TEXT
        assert reply.headers["x-turnout-role"] == "fast"
        # One tiny load (about a second; generous for a loaded 2-core machine), not MAX_WAIT.
        assert waited < MAX_WAIT / 2, f"waited {waited:.1f} s for the fallback"


async def test_health_and_status_name_the_role_just_switched_to_in_a_shared_group(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {"fast": role(tiny_models["tiny-hello"]), "coder": role(tiny_models["tiny-toolcall"])}
    group = {"gpu": {"members": ["fast", "coder"], "max_loaded": 2}}
    async with engines_config(roles, log_dir=str(tmp_path), groups=group) as gw:
        await post(gw, "/engine/switch/coder?wait=true")
        status, body = await post(gw, "/engine/switch/fast?wait=true")
        # coder stays loaded beside fast: the switch unloads nothing.
        assert (status, body["status"], body["to"], body["from"]) == (200, "ready", "fast", None)
        _, engine = await get(gw, "/engine/status")
        assert engine["role"] == "fast" and engine["loaded"] == ["fast", "coder"]
        assert (await get(gw, "/engine/health"))[1] == {"state": "ready", "role": "fast"}

        status, body = await post(gw, "/engine/switch/coder")
        assert (status, body["status"], body["from"]) == (200, "ready", None)
        _, engine = await get(gw, "/engine/status")
        assert engine["role"] == "coder" and engine["loaded"] == ["coder", "fast"]
        assert (await get(gw, "/engine/health"))[1] == {"state": "ready", "role": "coder"}


async def test_persistent_group_members_are_loaded_when_the_gateway_starts(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {"fast": role(tiny_models["tiny-hello"]), "coder": role(tiny_models["tiny-toolcall"])}
    groups = {
        "chat": {"members": ["fast"], "persistent": ["fast"]},
        "code": {"members": ["coder"], "persistent": ["coder"]},
    }
    async with engines_config(roles, log_dir=str(tmp_path), groups=groups) as gw:
        for _ in range(300):
            engines = (await get(gw, "/engine/status"))[1]["engines"]
            if all(e["state"] == "ready" for e in engines.values()):
                break
            await asyncio.sleep(0.05)
        assert {n: e["state"] for n, e in engines.items()} == {"fast": "ready", "coder": "ready"}
        reply = await gw.openai().chat.completions.create(
            model="fast", messages=USER, max_tokens=32
        )
        assert reply.choices[0].message.content == HELLO_TEXT


async def test_status_names_the_failed_role_as_health_does(tmp_path: Path) -> None:
    broken = {
        "engine": "llamacpp",
        "model": "unused",
        "start_timeout_seconds": 10,
        "command": [sys.executable, "-c", "raise SystemExit(3)", "${PORT}"],
    }
    async with engines_config({"broken": broken}, log_dir=str(tmp_path)) as gw:
        status, body = await post(gw, "/engine/switch/broken?wait=true")
        assert status == 503 and body["status"] == "failed"
        health = (await get(gw, "/engine/health"))[1]
        _, engine = await get(gw, "/engine/status")
        assert health == {"state": "failed", "role": "broken"}
        assert (engine["state"], engine["role"]) == ("failed", "broken")


async def test_a_roles_memory_is_estimated_from_its_gguf_then_measured_after_a_load(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    async with engines_config(
        {"fast": role(tiny_models["tiny-hello"], context=4096)}, log_dir=str(tmp_path)
    ) as gw:
        memory: dict[str, Any] = {}
        for _ in range(100):
            memory = (await get(gw, "/engine/status"))[1]["engines"]["fast"]["memory"]
            if memory["estimated_mb"]:
                break
            await asyncio.sleep(0.05)
        # 43 MB of weights + 2 MB of KV cache (4096 tokens) + overhead, before any load.
        size_mb = tiny_models["tiny-hello"].stat().st_size // 2**20
        assert size_mb < memory["estimated_mb"] < size_mb + 100
        assert memory["need_mb"] == memory["estimated_mb"] and memory["measured_mb"] is None

        await post(gw, "/engine/switch/fast?wait=true")
        for _ in range(100):
            memory = (await get(gw, "/engine/status"))[1]["engines"]["fast"]["memory"]
            if memory["measured_mb"]:
                break
            await asyncio.sleep(0.05)
        # The engine's resident size replaces the estimate (llama-server maps the weights:
        # at least the file is resident after its warm-up run).
        assert memory["measured_mb"] >= size_mb and memory["need_mb"] == memory["measured_mb"]
        assert memory["load_seconds"] > 0


async def test_measured_sizes_are_remembered_across_restarts(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    raw = {
        "roles": {"fast": role(tiny_models["tiny-hello"], context=4096)},
        "engines": {"log_dir": str(tmp_path)},
        "server": {"database": str(tmp_path / "turnout.db")},
    }
    async with running_gateway(config_of(raw)) as gw:
        await post(gw, "/engine/switch/fast?wait=true")
        measured = await memory_when(gw, "measured_mb")
    async with running_gateway(config_of(raw)) as again:
        remembered = await memory_when(again, "measured_mb")
        # Before any load in this run: planned with the size measured in the last one.
        assert (await get(again, "/engine/status"))[1]["engines"]["fast"]["state"] == "stopped"
    assert remembered["measured_mb"] == measured["measured_mb"] == remembered["need_mb"]
    assert remembered["load_seconds"] == measured["load_seconds"] > 0


async def memory_when(gw: RunningGateway, key: str) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    for _ in range(100):
        memory = (await get(gw, "/engine/status"))[1]["engines"]["fast"]["memory"]
        if memory[key]:
            return memory
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {key}: {memory}")


async def test_the_default_role_comes_back_once_nothing_is_asked_for_a_while(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {"fast": role(tiny_models["tiny-hello"]), "coder": role(tiny_models["tiny-toolcall"])}
    async with engines_config(
        roles, log_dir=str(tmp_path), default_role="fast", return_after_idle_seconds=1
    ) as gw:
        reply = await gw.openai().chat.completions.with_raw_response.create(
            model="coder", messages=USER, max_tokens=8
        )
        assert reply.headers["x-turnout-role"] == "coder"
        # A second without requests: coder is unloaded and fast loaded again, with nobody
        # asking for it (llama-swap #591).
        engines: dict[str, Any] = {}
        for _ in range(300):
            engines = (await get(gw, "/engine/status"))[1]["engines"]
            if engines["fast"]["state"] == "ready" and engines["coder"]["state"] == "stopped":
                break
            await asyncio.sleep(0.05)
        assert (engines["fast"]["state"], engines["coder"]["state"]) == ("ready", "stopped")
        assert (await get(gw, "/engine/health"))[1] == {"state": "ready", "role": "fast"}
        reply = await gw.openai().chat.completions.with_raw_response.create(
            model="fast", messages=USER, max_tokens=32
        )
        assert reply.parse().choices[0].message.content == HELLO_TEXT


async def test_an_agents_priority_reaches_the_engine_gate_and_its_role_loads_first(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {
        # Loads in ~0.7 s: long enough for both requests below to queue behind it.
        "first": role(tiny_models["tiny-hello"]),
        "sub": role(tiny_models["tiny-spm"]),
        "orch": role(tiny_models["tiny-toolcall"]),
    }
    async with engines_config(
        roles,
        log_dir=str(tmp_path),
        max_wait_seconds=MAX_WAIT,
        agent_priority={"orchestrator": 10},
    ) as gw:
        client = gw.openai()
        done: list[str] = []

        async def call(model: str, agent: str) -> None:
            # Local callers are trusted (auth.trust_agent_headers): X-Agent-Id names the agent.
            await client.chat.completions.create(
                model=model, messages=USER, max_tokens=4, extra_headers={"X-Agent-Id": agent}
            )
            done.append(model)

        # Both queue while "first" loads: the sub-agent's request is the older one.
        await post(gw, "/engine/switch/first")
        sub = asyncio.create_task(call("sub", "worker"))
        await asyncio.sleep(0.05)
        orch = asyncio.create_task(call("orch", "orchestrator"))
        await asyncio.gather(sub, orch)
        # Arrival order would load sub first; the orchestrator's agent priority goes first.
        assert done == ["orch", "sub"]
