"""Roles served by Ollama: turnout asks Ollama to load and unload instead of starting processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.ollama_upstream import FakeOllama
from tests.gateway_server import config_of, running_gateway


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as fake:
        yield fake


def ollama_roles(url: str) -> dict[str, object]:
    return {
        "fast": {"engine": "ollama", "base_url": url, "model": "llama3.2"},
        "vision": {"engine": "ollama", "base_url": url, "model": "llava"},
    }


async def test_switching_ollama_roles_loads_one_model_at_a_time(ollama: FakeOllama) -> None:
    async with running_gateway(config_of({"roles": ollama_roles(ollama.url)})) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/engine/switch/fast?wait=true") as response:
                assert response.status == 200 and (await response.json())["status"] == "ready"
            assert ollama.loaded_names() == ["llama3.2:latest"]
            load = ollama.posts("/api/generate")[-1].body
            assert load["model"] == "llama3.2" and load["keep_alive"] == -1 and "prompt" not in load

            async with session.post(gw.url + "/engine/switch/vision?wait=true") as response:
                assert response.status == 200
            assert ollama.loaded_names() == ["llava:latest"]

        reply = await gw.openai().chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        chat = ollama.posts("/api/chat")[-1].body
        assert chat["model"] == "llama3.2"
        assert ollama.loaded_names() == ["llama3.2:latest"]
    # Shutting the gateway down gives Ollama's memory back.
    assert ollama.loaded_names() == []


async def test_unknown_ollama_model_fails_the_role_with_ollamas_reason(ollama: FakeOllama) -> None:
    roles = {"ghost": {"engine": "ollama", "base_url": ollama.url, "model": "does-not-exist"}}
    async with running_gateway(config_of({"roles": roles})) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/engine/switch/ghost?wait=true") as response:
                body = await response.json()
            assert (
                response.status == 503
                and body["status"] == "failed"
                and "not found" in body["error"]
            )
            async with session.get(gw.url + "/engine/status") as response:
                engine = (await response.json())["engines"]["ghost"]
    assert engine["state"] == "failed" and "does-not-exist" in engine["last_error"]
