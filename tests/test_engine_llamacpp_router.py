"""llama.cpp's router mode as an engine kind: turnout loads and unloads models in one llama-server.

The real llama-server (tests/engines/) runs in router mode over a directory holding two tiny
models, with its own autoload and LRU off; each role names one of its models. A request for a
role loads its model through ``POST /models/load``, an eviction unloads it through
``POST /models/unload``, and the router's ``GET /models`` shows what turnout decided.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.engines.engines import HELLO_TEXT, get, llama_server_binary
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway


@pytest.fixture
def router(tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[str]:
    """A llama-server in router mode over tiny-hello, tiny-spm and a broken file; its URL."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("tiny-hello", "tiny-spm"):
        (models / f"{name}.gguf").symlink_to(tiny_models[name])
    (models / "tiny-broken.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    port = free_port()
    command = [
        str(llama_server_binary()),
        *("--models-dir", str(models), "--no-models-autoload", "--models-max", "0"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("-c", "512", "-np", "1", "-t", "1", "--jinja", "--no-webui"),
    ]
    with (tmp_path / "router.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "router.log").read_text(errors="replace")[-2000:])
            time.sleep(0.05)
        yield url
    finally:
        # The router and the model servers it spawned share its process group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def healthy(url: str) -> bool:
    try:
        return get(url + "/health", timeout=1)[0] == 200
    except OSError:
        return False


def router_statuses(url: str) -> dict[str, str]:
    """What the router itself says of the two good models, by model id."""
    with urllib.request.urlopen(url + "/models", timeout=10) as response:
        body = json.loads(response.read())
    statuses = {entry["id"]: entry["status"]["value"] for entry in body["data"]}
    return {name: statuses[name] for name in ("tiny-hello", "tiny-spm")}


def router_roles(url: str, **extra: Any) -> dict[str, Any]:
    role = {"engine": "llamacpp-router", "base_url": url + "/v1", "start_timeout_seconds": 60}
    return {
        "roles": {"hello": {**role, "model": "tiny-hello"}, "spm": {**role, "model": "tiny-spm"}},
        **extra,
    }


async def engine_states(gw: RunningGateway) -> dict[str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + "/engine/status") as response,
    ):
        body = await response.json()
    return {name: engine["state"] for name, engine in body["engines"].items()}


async def chat(gw: RunningGateway, role: str) -> str:
    reply = await gw.openai().chat.completions.create(
        model=role, messages=[{"role": "user", "content": "hi"}], max_tokens=8
    )
    return reply.choices[0].message.content or ""


async def test_a_router_role_is_loaded_in_the_router_and_unloaded_when_evicted(router: str) -> None:
    assert router_statuses(router) == {"tiny-hello": "unloaded", "tiny-spm": "unloaded"}
    async with running_gateway(config_of(router_roles(router))) as gw:
        assert (await chat(gw, "hello")).startswith(HELLO_TEXT[:5])
        assert router_statuses(router) == {"tiny-hello": "loaded", "tiny-spm": "unloaded"}

        # One at a time (the default group): spm's load unloads hello in the same router.
        await chat(gw, "spm")
        assert router_statuses(router) == {"tiny-hello": "unloaded", "tiny-spm": "loaded"}
        assert await engine_states(gw) == {"hello": "stopped", "spm": "ready"}


async def test_a_group_keeps_two_router_models_loaded_in_one_server(router: str) -> None:
    groups = {"groups": {"router": {"members": ["hello", "spm"], "max_loaded": 2}}}
    async with running_gateway(config_of(router_roles(router, engines=groups))) as gw:
        await chat(gw, "hello")
        await chat(gw, "spm")
        assert router_statuses(router) == {"tiny-hello": "loaded", "tiny-spm": "loaded"}
        assert await engine_states(gw) == {"hello": "ready", "spm": "ready"}
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/engine/unload?role=hello") as response:
                assert response.status == 200
        assert router_statuses(router) == {"tiny-hello": "unloaded", "tiny-spm": "loaded"}


async def test_a_router_role_naming_a_model_the_router_lacks_fails_naming_its_models(
    router: str,
) -> None:
    raw = router_roles(router)
    raw["roles"]["hello"]["model"] = "tiny-missing"
    async with running_gateway(config_of(raw)) as gw, aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/engine/switch/hello?wait=true") as response:
            body = await response.json()
        assert response.status == 503
        assert "no model 'tiny-missing'" in body["error"]
        assert "tiny-hello" in body["error"] and "tiny-spm" in body["error"]


async def test_a_model_the_router_cannot_load_fails_its_role_with_the_exit_code(
    router: str,
) -> None:
    raw = router_roles(router)
    raw["roles"]["hello"]["model"] = "tiny-broken"
    async with running_gateway(config_of(raw)) as gw, aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/engine/switch/hello?wait=true") as response:
            body = await response.json()
        assert response.status == 503
        assert "could not load 'tiny-broken'" in body["error"], body
        # The router is unharmed: the other role still loads in it.
        assert (await chat(gw, "spm")) is not None
