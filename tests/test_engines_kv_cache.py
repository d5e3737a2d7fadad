"""The KV cache survives a swap: real llama-server roles save their slots on stop, restore on start."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.engines import kv_cache
from tests.engines.engines import HELLO_TEXT
from tests.gateway_server import RunningGateway
from tests.test_engines import engines_config, get, get_text, post, role

pytestmark = pytest.mark.engine

# About 700 prompt tokens: long enough that a re-prefill and a cache hit are far apart.
SYSTEM = "You are a careful coding agent. " + " ".join(
    f"Rule {i}: keep function {i} small and name it for what it does." for i in range(50)
)
FIRST: list[Any] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Read main.py."},
]


def next_turn(reply: str) -> list[Any]:
    return [*FIRST, {"role": "assistant", "content": reply}, {"role": "user", "content": "Go on."}]


def roles(models: dict[str, Path], model_a: Path | None = None) -> dict[str, Any]:
    return {"fast": role(model_a or models["tiny-hello"]), "coder": role(models["tiny-toolcall"])}


def kv(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"dir": str(tmp_path / "kv"), "save_timeout_seconds": 20, **extra}


async def swap(gw: RunningGateway, to: str) -> float:
    started = time.monotonic()
    status, body = await post(gw, f"/engine/switch/{to}?wait=true")
    assert (status, body["status"]) == (200, "ready"), body
    return time.monotonic() - started


async def first_turn_then_swap_away(gw: RunningGateway) -> tuple[int, str]:
    client = gw.openai()
    reply = await client.chat.completions.create(model="fast", messages=FIRST, max_tokens=16)
    assert reply.usage is not None and reply.usage.prompt_tokens > 500
    await swap(gw, "coder")
    return reply.usage.prompt_tokens, reply.choices[0].message.content or ""


async def cached_after_swap_back(gw: RunningGateway, text: str) -> tuple[int, float]:
    seconds = await swap(gw, "fast")
    reply = await gw.openai().chat.completions.create(
        model="fast", messages=next_turn(text), max_tokens=16
    )
    assert reply.choices[0].message.content == HELLO_TEXT
    details = reply.usage.prompt_tokens_details if reply.usage else None
    return (details.cached_tokens or 0) if details else 0, seconds


def slot_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "kv" / "fast").glob("*" + kv_cache.SUFFIX))


async def test_the_prompt_is_served_from_the_restored_cache_after_a_swap_back(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    async with engines_config(
        roles(tiny_models), log_dir=str(tmp_path), kv_cache=kv(tmp_path)
    ) as gw:
        prompt, text = await first_turn_then_swap_away(gw)
        assert slot_files(tmp_path), "stopping the role saved no slot"
        _, status = await get(gw, "/engine/status")
        stored = status["engines"]["fast"]["kv_cache"]
        assert stored["stored"] is True and stored["bytes"] > 0
        assert stored["last_save"]["outcome"] == "ok"

        cached, _ = await cached_after_swap_back(gw, text)
        assert cached >= 0.9 * prompt, (cached, prompt)

        _, status = await get(gw, "/engine/status")
        restore = status["engines"]["fast"]["kv_cache"]["last_restore"]
        assert restore["outcome"] == "ok" and restore["tokens"] >= prompt
        _, metrics = await get_text(gw, "/metrics")
        assert 'turnout_kv_cache_restores_total{outcome="ok",role="fast"}' in metrics
        assert 'turnout_kv_cache_saves_total{outcome="ok",role="fast"}' in metrics
        assert 'turnout_kv_cache_bytes{role="fast"}' in metrics


async def test_without_the_cache_the_swap_back_prefills_everything_again(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    async with engines_config(
        roles(tiny_models), log_dir=str(tmp_path), kv_cache=kv(tmp_path, enabled=False)
    ) as gw:
        prompt, text = await first_turn_then_swap_away(gw)
        cached, _ = await cached_after_swap_back(gw, text)
        assert cached < 0.1 * prompt
        _, status = await get(gw, "/engine/status")
        assert status["engines"]["fast"]["kv_cache"] == {"enabled": False}
        assert not (tmp_path / "kv").exists()


async def test_a_changed_model_file_never_loads_the_old_cache(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "fast.gguf"
    shutil.copyfile(tiny_models["tiny-hello"], model)
    async with engines_config(
        roles(tiny_models, model), log_dir=str(tmp_path), kv_cache=kv(tmp_path)
    ) as gw:
        prompt, text = await first_turn_then_swap_away(gw)
        saved = slot_files(tmp_path)
        assert saved
        # Another build of the model at the same path (same tokenizer, one byte different).
        data = bytearray(model.read_bytes())
        data[-1] ^= 1
        model.write_bytes(bytes(data))

        cached, _ = await cached_after_swap_back(gw, text)
        assert cached < 0.1 * prompt
        assert not any(p.exists() for p in saved), "the stale cache was kept"
        _, metrics = await get_text(gw, "/metrics")
        assert 'turnout_kv_cache_restores_total{outcome="stale",role="fast"}' in metrics
        assert 'turnout_kv_cache_restores_total{outcome="ok",role="fast"}' not in metrics


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":  # the size it was saved with, other bytes: llama-server refuses it
        path.write_bytes(b"\x17" * len(data))
        return
    cut = data[: len(data) // 2]
    if how == "truncated":  # its name still records the full size
        path.write_bytes(cut)
        return
    # Cut short under a name claiming that size: llama-server aborts (GGML_ASSERT) reading it.
    key, slot, _ = kv_cache.parse_name(path.name) or ("", 0, 0)
    path.unlink()
    (path.parent / kv_cache.file_name(key, slot, len(cut))).write_bytes(cut)


@pytest.mark.parametrize(
    ("how", "outcome"),
    [("garbage", "error"), ("truncated", "damaged"), ("truncated-renamed", "error")],
)
async def test_a_corrupt_cache_file_is_harmless(
    tiny_models: dict[str, Path], tmp_path: Path, how: str, outcome: str
) -> None:
    async with engines_config(
        roles(tiny_models), log_dir=str(tmp_path), kv_cache=kv(tmp_path)
    ) as gw:
        prompt, text = await first_turn_then_swap_away(gw)
        for path in slot_files(tmp_path):
            damage(path, how)

        cached, _ = await cached_after_swap_back(gw, text)  # served, by a healthy engine
        assert cached < 0.1 * prompt
        _, status = await get(gw, "/engine/status")
        engine = status["engines"]["fast"]
        assert engine["state"] == "ready" and engine["failures"] == 0
        _, metrics = await get_text(gw, "/metrics")
        assert f'turnout_kv_cache_restores_total{{outcome="{outcome}",role="fast"}}' in metrics
        assert 'turnout_kv_cache_restores_total{outcome="ok",role="fast"}' not in metrics
        # No crash reached the supervisor (a crash would count here and cost a restart backoff).
        assert 'turnout_engine_failures_total{role="fast"}' not in metrics
        if how == "truncated-renamed":
            assert "restarted" in engine["kv_cache"]["last_restore"]["detail"]


async def test_the_byte_cap_keeps_the_cache_directory_bounded(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # A cap below one slot file: every save is evicted again at once, and the swap still works.
    async with engines_config(
        roles(tiny_models), log_dir=str(tmp_path), kv_cache=kv(tmp_path, max_bytes_total=1000)
    ) as gw:
        prompt, text = await first_turn_then_swap_away(gw)
        assert slot_files(tmp_path) == []
        cached, _ = await cached_after_swap_back(gw, text)
        assert cached < 0.1 * prompt
        _, metrics = await get_text(gw, "/metrics")
        assert 'turnout_kv_cache_evictions_total{role="fast"}' in metrics
