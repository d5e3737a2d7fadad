"""Memory-budget eviction on three real llama-server roles (issue 14).

``engines.memory_budget_mb`` makes the budget small enough for the tiny test models: three
roles whose measured sizes allow two at once, all in one group that could hold the three, so
memory alone decides. Which role is unloaded when the third is asked for shows the rule: the
one that frees enough at the least reload cost, not simply the least recently used. Before a
role's first load it is planned with its estimate (GGUF + KV cache + overhead); after it, with
its measured size. The decisions themselves are unit-tested in ``test_engine_memory.py``;
``bench/eviction.py`` prints the same scenarios with their numbers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_server import RunningGateway
from tests.test_engines import USER, engines_config, get, role

pytestmark = pytest.mark.engine


def three_roles(models: dict[str, Path], small_context: int, big_context: int) -> dict[str, Any]:
    """small: a 5 MB model, loads in ~0.15 s; mid and big: 43 MB models (~0.7 s), big with a
    larger KV cache. Measured on this machine: small ~27 MB at 4096 tokens (~61 at 65536),
    mid ~102 MB, big ~134 MB at 65536 tokens."""
    return {
        "small": role(models["tiny-spm"], context=small_context),
        "mid": role(models["tiny-hello"], context=4096),
        "big": role(models["tiny-toolcall"], context=big_context),
    }


def together(budget_mb: int) -> dict[str, Any]:
    """One group that may hold all three: only the memory budget makes room."""
    return {
        "memory_budget_mb": budget_mb,
        "groups": {"local": {"members": ["small", "mid", "big"], "max_loaded": 3}},
    }


async def ask(gw: RunningGateway, role_name: str) -> None:
    reply = await gw.openai().chat.completions.with_raw_response.create(
        model=role_name, messages=USER, max_tokens=4
    )
    assert reply.headers["x-turnout-role"] == role_name


async def measured(gw: RunningGateway, role_name: str, key: str = "measured_mb") -> dict[str, Any]:
    """The role's memory once ``key`` is in (estimated at start and measured after each load,
    both off the owner)."""
    memory: dict[str, Any] = {}
    for _ in range(200):
        memory = (await get(gw, "/engine/status"))[1]["engines"][role_name]["memory"]
        if memory[key]:
            return memory
        await asyncio.sleep(0.05)
    raise AssertionError(f"{role_name} has no {key}: {memory}")


async def states(gw: RunningGateway, wanted: dict[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for _ in range(200):
        engines = (await get(gw, "/engine/status"))[1]["engines"]
        found = {name: engines[name]["state"] for name in wanted}
        if found == wanted:
            break
        await asyncio.sleep(0.05)
    return found


async def test_the_role_that_frees_enough_is_evicted_not_the_cheaper_one_too_small(
    tiny_models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 200 MB: small + mid (~130) and small + big (~160) fit, mid + big (~236) do not.
    roles = three_roles(tiny_models, small_context=4096, big_context=65536)
    async with engines_config(roles, log_dir=str(tmp_path), **together(200)) as gw:
        # Planned with its estimate until its first load, then with what it measured.
        before = await measured(gw, "small", "estimated_mb")
        await ask(gw, "small")
        small = await measured(gw, "small")
        assert before["measured_mb"] is None and small["need_mb"] == small["measured_mb"]
        assert small["estimated_mb"] == before["estimated_mb"] != small["measured_mb"]
        await ask(gw, "mid")
        mid = await measured(gw, "mid")
        assert await states(gw, {"small": "ready", "mid": "ready"}) == {
            "small": "ready",
            "mid": "ready",
        }
        # big does not fit beside both. small is the least recently used and the cheapest to
        # reload, but unloading it frees too little: mid goes.
        with caplog.at_level(logging.INFO, logger="turnout.engines"):
            await ask(gw, "big")
        assert await states(gw, {"small": "ready", "mid": "stopped", "big": "ready"}) == {
            "small": "ready",
            "mid": "stopped",
            "big": "ready",
        }
        why = [r.getMessage() for r in caplog.records if "for role big" in r.getMessage()]
        assert why and why[0].startswith("unloading mid for role big")
        assert (
            f"mid {mid['measured_mb']} MB" in why[0]
            and f"small {small['measured_mb']} MB" in why[0]
        )


async def test_of_two_roles_that_free_enough_the_cheaper_to_reload_is_evicted(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # 240 MB: any two fit (small ~61 with its larger cache, mid and big ~102 each), three do
    # not; unloading either loaded role frees enough for big.
    roles = three_roles(tiny_models, small_context=65536, big_context=4096)
    async with engines_config(roles, log_dir=str(tmp_path), **together(240)) as gw:
        await ask(gw, "mid")
        await ask(gw, "small")
        mid, small = await measured(gw, "mid"), await measured(gw, "small")
        # The measured load times are the reload costs: the 5 MB model reloads faster.
        assert small["load_seconds"] < mid["load_seconds"]
        await ask(gw, "big")
        # mid is the least recently used, yet small goes: it is the cheaper one to load again.
        assert await states(gw, {"small": "stopped", "mid": "ready", "big": "ready"}) == {
            "small": "stopped",
            "mid": "ready",
            "big": "ready",
        }
