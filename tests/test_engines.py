"""Hot-swapping real llama-server engines: the supervisor, its API and requests during swaps."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from gateway.engines.builtin import LLAMACPP_COMMAND
from tests.engines.engines import HELLO_TEXT, llama_server_binary
from tests.gateway_server import RunningGateway, config_of, running_gateway

pytestmark = pytest.mark.engine

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def role(model: Path, **extra: Any) -> dict[str, Any]:
    command = [str(llama_server_binary()), *LLAMACPP_COMMAND[1:], "-np", "4", "-t", "1"]
    return {
        "engine": "llamacpp",
        "model": str(model),
        "command": command,
        "start_timeout_seconds": 60,
        **extra,
    }


def engines_config(
    roles: dict[str, Any], **engines: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    raw = {
        "roles": roles,
        "engines": {"max_wait_seconds": 2, "wait_timeout_seconds": 60, **engines},
        "routing": {"retries": 0},
        "server": {"keepalive_seconds": 0.2},
    }
    return running_gateway(config_of(raw))


@pytest.fixture
async def two_roles(tiny_models: dict[str, Path], tmp_path: Path) -> AsyncIterator[RunningGateway]:
    roles = {"fast": role(tiny_models["tiny-hello"]), "coder": role(tiny_models["tiny-toolcall"])}
    async with engines_config(roles, log_dir=str(tmp_path)) as gw:
        yield gw


async def get(gw: RunningGateway, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(gw.url + path) as response:
        return response.status, await response.json(content_type=None)


async def post(gw: RunningGateway, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(gw.url + path) as response:
        return response.status, await response.json(content_type=None)


async def wait_health(
    gw: RunningGateway, state: str = "ready", seconds: float = 30
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(int(seconds / 0.05)):
        _, body = await get(gw, "/engine/health")
        if body["state"] == state:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"engine never reached {state}: {body}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


async def test_switch_status_health_cycle_like_the_seed(two_roles: RunningGateway) -> None:
    gw = two_roles
    status, body = await get(gw, "/engine/health")
    assert (status, body["state"]) == (503, "idle")

    status, body = await post(gw, "/engine/switch/fast")
    assert status == 202 and body["status"] == "switching" and body["to"] == "fast"
    assert (await wait_health(gw))["role"] == "fast"
    _, engine = await get(gw, "/engine/status")
    assert engine["role"] == "fast" and engine["engines"]["fast"]["state"] == "ready"
    fast_pid = engine["engines"]["fast"]["pid"]
    assert alive(fast_pid)

    reply = await gw.openai().chat.completions.with_raw_response.create(
        model="fast", messages=USER, max_tokens=32
    )
    assert reply.parse().choices[0].message.content == HELLO_TEXT
    assert reply.headers["x-turnout-role"] == "fast"

    status, body = await post(gw, "/engine/switch/fast")
    assert (status, body["status"]) == (200, "ready")

    status, body = await post(gw, "/engine/switch/coder?wait=true")
    assert (
        status == 200
        and body["status"] == "ready"
        and body["from"] == "fast"
        and body["to"] == "coder"
    )
    _, engine = await get(gw, "/engine/status")
    assert engine["role"] == "coder" and engine["engines"]["fast"]["state"] == "stopped"
    assert engine["engines"]["coder"]["last_swap_seconds"] > 0
    assert not alive(fast_pid), "the evicted engine is still running"

    status, body = await post(gw, "/engine/switch/nope")
    assert (
        status == 404 and "fast" in body["error"]["message"] and "coder" in body["error"]["message"]
    )

    status, body = await post(gw, "/engine/unload")
    assert status == 200
    assert (await get(gw, "/engine/health"))[1]["state"] == "idle"


async def test_request_for_an_unloaded_role_loads_it_and_waits(two_roles: RunningGateway) -> None:
    gw = two_roles
    await post(gw, "/engine/switch/coder?wait=true")
    reply = await gw.openai().chat.completions.create(model="fast", messages=USER, max_tokens=32)
    assert reply.choices[0].message.content == HELLO_TEXT
    _, engine = await get(gw, "/engine/status")
    assert engine["role"] == "fast" and engine["engines"]["coder"]["state"] == "stopped"


async def test_streaming_client_gets_keepalives_while_the_engine_loads(
    two_roles: RunningGateway,
) -> None:
    gw = two_roles
    async with aiohttp.ClientSession() as session:
        body = {"model": "fast", "messages": USER, "max_tokens": 32, "stream": True}
        async with session.post(gw.v1 + "/chat/completions", json=body) as response:
            raw = await response.read()
    # The keep-alives name the stage the swap is at (gateway/pipeline/progress.py).
    assert raw.startswith(b": turnout: starting role fast\n\n"), raw[:80]
    text = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
        for e in raw.split(b"\n\n")
        if e.startswith(b"data: {") and json.loads(e[6:])["choices"]
    )
    assert text == HELLO_TEXT


async def test_concurrent_clients_across_back_to_back_swaps_never_fail(
    two_roles: RunningGateway,
) -> None:
    gw = two_roles
    client = gw.openai()
    failures: list[str] = []
    served = {"fast": 0, "coder": 0}

    async def worker(n: int) -> None:
        for i in range(6):
            model = "fast" if (n + i) % 2 else "coder"
            try:
                await client.chat.completions.create(model=model, messages=USER, max_tokens=32)
                served[model] += 1
            except openai.APIError as exc:
                failures.append(f"{model}: {exc}")

    async def switcher() -> None:
        for i in range(10):
            await post(gw, f"/engine/switch/{'fast' if i % 2 else 'coder'}")
            await asyncio.sleep(0.1)

    await asyncio.gather(switcher(), *(worker(n) for n in range(16)))
    assert failures == []
    assert served["fast"] == served["coder"] == 48
    _, text = await get_text(gw, "/metrics")
    assert "turnout_engine_swaps_total" in text


async def get_text(gw: RunningGateway, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(gw.url + path) as response:
        return response.status, await response.text()


def swaps(metrics: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("turnout_engine_swaps_total{")
    )


async def test_queued_requests_are_grouped_by_role(two_roles: RunningGateway) -> None:
    gw = two_roles
    await post(gw, "/engine/switch/fast?wait=true")
    before = swaps((await get_text(gw, "/metrics"))[1])
    client = gw.openai()
    # A B A A C-style burst: interleaved, all at once. FIFO would swap at every change of role.
    order = ["fast", "coder", "fast", "fast", "coder", "fast", "coder", "fast"]
    replies = await asyncio.gather(
        *(client.chat.completions.create(model=m, messages=USER, max_tokens=32) for m in order)
    )
    assert len(replies) == len(order)
    after = swaps((await get_text(gw, "/metrics"))[1])
    assert after - before == 1, "the burst should cost exactly one swap (fast first, then coder)"


async def test_engine_killed_mid_stream_fails_that_stream_then_restarts(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {"long": role(tiny_models["tiny-random"], context=4096)}
    async with engines_config(roles, log_dir=str(tmp_path), restart_backoff_seconds=0.1) as gw:
        await post(gw, "/engine/switch/long?wait=true")
        pid = (await get(gw, "/engine/status"))[1]["engines"]["long"]["pid"]
        client = gw.openai()
        stream = await client.chat.completions.create(
            model="long",
            messages=USER,
            max_tokens=3000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content is not None and alive(pid):
                    os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            engine = (await get(gw, "/engine/status"))[1]["engines"]["long"]
            if engine["state"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert (
            engine["state"] == "failed"
            and engine["exit_code"] == -9
            and "exited unexpectedly" in engine["last_error"]
        )
        reply = await client.chat.completions.create(model="long", messages=USER, max_tokens=4)
        assert reply.choices[0].finish_reason == "length"
        assert (await get(gw, "/engine/status"))[1]["engines"]["long"]["pid"] != pid


async def test_engine_that_never_becomes_healthy_fails_with_a_clear_reason(tmp_path: Path) -> None:
    never = {
        "engine": "llamacpp",
        "model": "unused",
        "start_timeout_seconds": 1.5,
        "command": [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "${PORT}"],
    }
    missing = {
        "engine": "llamacpp",
        "model": "/nonexistent/model.gguf",
        "start_timeout_seconds": 10,
        "command": [str(llama_server_binary()), "-m", "${MODEL}", "--port", "${PORT}"],
    }
    async with engines_config({"never": never, "missing": missing}, log_dir=str(tmp_path)) as gw:
        client = gw.openai()
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="never", messages=USER)
        assert caught.value.status_code == 503
        assert "not healthy after 1.5 s" in str(caught.value.body)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="missing", messages=USER)
        assert caught.value.status_code == 503 and "exited with code" in str(caught.value.body)
        _, engine = await get(gw, "/engine/status")
        assert engine["engines"]["missing"]["state"] == "failed"
        assert engine["engines"]["missing"]["exit_code"] not in (None, 0)
        assert (await get(gw, "/engine/health"))[1]["state"] == "failed"


async def test_a_port_another_server_holds_fails_the_start_and_gets_no_request(
    tmp_path: Path,
) -> None:
    """A healthy server already on the role's port: its /health must not pass for the engine's
    (the role's requests would go to it); the start fails, naming the port and its key."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"status": "ok"})

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(other)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    squatted = {
        "engine": "llamacpp",
        "model": "unused",
        "port": port,
        "start_timeout_seconds": 5,
        "command": [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "${PORT}"],
    }
    try:
        async with engines_config({"squatted": squatted}, log_dir=str(tmp_path)) as gw:
            with pytest.raises(openai.APIStatusError) as caught:
                await gw.openai().chat.completions.create(model="squatted", messages=USER)
            assert caught.value.status_code == 503
            message = str(caught.value.body)
            assert f"cannot listen on 127.0.0.1:{port} (roles.squatted.port)" in message
            _, engine = await get(gw, "/engine/status")
            assert engine["engines"]["squatted"]["state"] == "failed"
            assert engine["engines"]["squatted"]["pid"] is None
    finally:
        await runner.cleanup()
    assert seen == []


async def test_stop_during_start_aborts_the_start(tmp_path: Path) -> None:
    slow = {
        "engine": "llamacpp",
        "model": "unused",
        "start_timeout_seconds": 30,
        "command": [sys.executable, "-c", "import time; time.sleep(60)", "${PORT}"],
    }
    async with engines_config({"slow": slow}, log_dir=str(tmp_path)) as gw:
        await post(gw, "/engine/switch/slow")
        for _ in range(100):
            engine = (await get(gw, "/engine/status"))[1]["engines"]["slow"]
            if engine["state"] == "starting" and engine["pid"] is None:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        children = _children(os.getpid())
        assert any("time.sleep(60)" in c for c in children.values())
        started = asyncio.get_running_loop().time()
        status, _ = await post(gw, "/engine/unload?role=slow")
        assert status == 200 and asyncio.get_running_loop().time() - started < 5
        assert (await get(gw, "/engine/status"))[1]["engines"]["slow"]["state"] == "stopped"
        assert not any("time.sleep(60)" in c for c in _children(os.getpid()).values())


def _children(parent: int) -> dict[int, str]:
    """Processes whose parent is ``parent``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and "State:\tZ" not in (entry / "status").read_text():
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, ValueError, IndexError):
            continue
    return found


async def test_idle_ttl_unloads_but_never_with_requests_in_flight(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {"fast": role(tiny_models["tiny-hello"], ttl_seconds=0.5)}
    async with engines_config(roles, log_dir=str(tmp_path)) as gw:
        await gw.openai().chat.completions.create(model="fast", messages=USER, max_tokens=32)
        pid = (await get(gw, "/engine/status"))[1]["engines"]["fast"]["pid"]
        for _ in range(60):
            if (await get(gw, "/engine/status"))[1]["engines"]["fast"]["state"] == "stopped":
                break
            await asyncio.sleep(0.05)
        assert (await get(gw, "/engine/status"))[1]["engines"]["fast"]["state"] == "stopped"
        assert not alive(pid)


async def test_shutdown_leaves_no_engine_process(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {"fast": role(tiny_models["tiny-hello"]), "coder": role(tiny_models["tiny-toolcall"])}
    async with engines_config(
        roles,
        log_dir=str(tmp_path),
        groups={"all": {"members": ["fast", "coder"], "max_loaded": 2}},
    ) as gw:
        await post(gw, "/engine/switch/fast?wait=true")
        await post(gw, "/engine/switch/coder?wait=true")
        engines = (await get(gw, "/engine/status"))[1]["engines"]
        pids = [engines["fast"]["pid"], engines["coder"]["pid"]]
        assert all(alive(p) for p in pids)
    assert not any(alive(p) for p in pids)


async def test_memory_that_does_not_fit_falls_back_to_a_smaller_role(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {
        "huge": role(tiny_models["tiny-toolcall"], memory_mb=10**9, fallback=["fast"]),
        "fast": role(tiny_models["tiny-hello"], memory_mb=64),
    }
    async with engines_config(roles, log_dir=str(tmp_path)) as gw:
        reply = await gw.openai().chat.completions.with_raw_response.create(
            model="huge", messages=USER, max_tokens=32
        )
        assert reply.parse().choices[0].message.content == HELLO_TEXT
        assert reply.headers["x-turnout-role"] == "fast"
        assert "needs 1000000000 MB" in reply.headers["x-turnout-fallback"]


async def test_conversation_longer_than_the_context_goes_to_the_fallback_role(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {
        "small": role(tiny_models["tiny-toolcall"], context=256, fallback=["big"]),
        "big": role(tiny_models["tiny-hello"], context=4096),
    }
    async with engines_config(roles, log_dir=str(tmp_path)) as gw:
        client = gw.openai()
        long_talk: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 400}]
        reply = await client.chat.completions.with_raw_response.create(
            model="small", messages=long_talk, max_tokens=32
        )
        assert (
            reply.headers["x-turnout-role"] == "big"
            and "context of 256" in reply.headers["x-turnout-fallback"]
        )
        assert reply.parse().choices[0].message.content == HELLO_TEXT


async def test_the_same_conversation_reaches_each_model_complete_across_a_switch(
    two_roles: RunningGateway,
) -> None:
    gw = two_roles
    client = gw.openai()
    conversation: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    first = await client.chat.completions.create(model="fast", messages=conversation, max_tokens=32)
    second = await client.chat.completions.create(
        model="coder", messages=conversation, max_tokens=32
    )
    # Both tiny models share one tokenizer and chat template: equal prompt sizes mean the
    # gateway added and dropped nothing on either side of the swap.
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 20


async def test_engine_metrics_are_exported(two_roles: RunningGateway) -> None:
    gw = two_roles
    await gw.openai().chat.completions.create(model="fast", messages=USER, max_tokens=32)
    _, text = await get_text(gw, "/metrics")
    for needle in (
        'turnout_engine_state{role="fast",state="ready"} 1.0',
        'turnout_engine_state{role="coder",state="stopped"} 1.0',
        'turnout_engine_swaps_total{role="fast"} 1.0',
        'turnout_engine_swap_duration_seconds_count{role="fast"} 1.0',
        'turnout_engine_wait_seconds_count{role="fast"} 1.0',
        'turnout_engine_queue_depth{role="fast"} 0.0',
    ):
        assert needle in text, needle


async def test_two_starving_roles_take_turns_instead_of_livelocking(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # max_wait 0: every queued request counts as starving at once. A supervisor that let a
    # starving peer evict a role before it served the requests it was loaded for would swap
    # back and forth for ever here.
    roles = {"fast": role(tiny_models["tiny-hello"]), "coder": role(tiny_models["tiny-toolcall"])}
    async with engines_config(
        roles, log_dir=str(tmp_path), max_wait_seconds=0, wait_timeout_seconds=30
    ) as gw:
        client = gw.openai()
        order = ["fast", "coder"] * 4
        replies = await asyncio.gather(
            *(client.chat.completions.create(model=m, messages=USER, max_tokens=32) for m in order)
        )
        assert len(replies) == 8
        assert swaps((await get_text(gw, "/metrics"))[1]) <= 4


async def test_a_role_that_fits_alongside_starts_while_the_old_engine_exits(
    tiny_models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    roles = {
        "fast": role(tiny_models["tiny-hello"], memory_mb=64),
        "coder": role(tiny_models["tiny-toolcall"], memory_mb=64),
    }
    async with engines_config(roles, log_dir=str(tmp_path)) as gw:
        await post(gw, "/engine/switch/fast?wait=true")
        caplog.clear()
        with caplog.at_level("INFO", logger="turnout.engines"):
            status, body = await post(gw, "/engine/switch/coder?wait=true")
        assert (status, body["status"]) == (200, "ready")
        lines = [r.getMessage() for r in caplog.records]
        started = next(i for i, line in enumerate(lines) if line.startswith("role coder starting"))
        stopped = next(i for i, line in enumerate(lines) if line.startswith("role fast stopped"))
        assert started < stopped, lines
        engines = (await get(gw, "/engine/status"))[1]["engines"]
        assert (engines["fast"]["state"], engines["coder"]["state"]) == ("stopped", "ready")
