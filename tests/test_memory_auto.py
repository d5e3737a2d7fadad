"""Automatic memory end to end: real gateway, real memory parts, a fake upstream that records
what it was sent, so the memory the plugin put into the system prompt can be read back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.fakes.openai_upstream import FakeOpenAI, RecordedRequest
from tests.gateway_server import RunningGateway, config_of, running_gateway


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
async def gw(fake: FakeOpenAI, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    raw = {
        "server": {"database": str(tmp_path / "t.db")},
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [
            {"name": "small", "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "large", "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "plain", "targets": [{"provider": "up", "model": "ok"}]},
        ],
        "routing": {"retries": 0},
        "plugins": {"enabled": ["memory"]},
        "memory": {"auto": {"models": ["small", "large"], "top_k": 3}},
    }
    async with running_gateway(config_of(raw)) as running:
        yield running


def chats(fake: FakeOpenAI) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"]


def system_prompt(request: RecordedRequest) -> str:
    first = request.body["messages"][0]
    return first["content"] if first["role"] == "system" else ""


async def memory_items(gw: RunningGateway, count: int, **where: Any) -> list[dict[str, Any]]:
    """The agent's newest items, once at least ``count`` were stored (off the request path)."""
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.post(
                gw.url + "/v1/memory/query", json={"limit": 20, **where}
            ) as response:
                items: list[dict[str, Any]] = (await response.json())["data"]
            if len(items) >= count or time.monotonic() > deadline:
                return items
            await asyncio.sleep(0.05)


async def ask(
    client: AsyncOpenAI, model: str, text: str, session: str | None = None, **options: Any
) -> str:
    metadata = {"session_id": session} if session else {}
    extra = {"metadata": metadata} if metadata else {}
    if options.pop("stream", False):
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": text}],
            stream=True,
            extra_body=extra,
            **options,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], extra_body=extra, **options
    )
    return reply.choices[0].message.content or ""


async def test_a_session_survives_a_switch_of_model(gw: RunningGateway, fake: FakeOpenAI) -> None:
    client = gw.openai()
    assert await ask(client, "small", "My name is Ada and I sail.", "s-1") == (
        "echo: My name is Ada and I sail."
    )
    (stored,) = await memory_items(gw, 1)
    assert stored["kind"] == "conversation" and stored["session_id"] == "s-1"
    assert (
        stored["content"]
        == "User: My name is Ada and I sail.\nAssistant: echo: My name is Ada and I sail."
    )
    assert stored["meta"]["model"] == "small"

    # Another model, only the new message: the session's earlier turn comes along, streamed
    # replies are remembered too.
    await ask(client, "large", "What do I do on weekends?", "s-1", stream=True)
    prompt = system_prompt(chats(fake)[-1])
    assert "Earlier in this conversation:\nUser: My name is Ada and I sail." in prompt
    items = await memory_items(gw, 2)
    assert items[0]["meta"]["model"] == "large"
    assert items[0]["content"].endswith("echo: What do I do on weekends?")

    # A client that resends the conversation gets no copy of it in the system prompt.
    await gw.openai().chat.completions.create(
        model="large",
        messages=[
            {"role": "user", "content": "My name is Ada and I sail."},
            {"role": "assistant", "content": "echo: My name is Ada and I sail."},
            {"role": "user", "content": "What do I do on weekends?"},
            {"role": "assistant", "content": "echo: What do I do on weekends?"},
            {"role": "user", "content": "Thanks!"},
        ],
        extra_body={"metadata": {"session_id": "s-1"}},
    )
    assert "Earlier in this conversation" not in system_prompt(chats(fake)[-1])


async def test_relevant_memories_join_the_callers_system_prompt(
    gw: RunningGateway, fake: FakeOpenAI
) -> None:
    async with aiohttp.ClientSession() as session:
        await session.post(
            gw.url + "/v1/memory/store",
            json={"content": "The deploy window is Friday 18:00 UTC.", "kind": "kb"},
        )
    client = gw.openai()
    await client.chat.completions.create(
        model="small",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "When is the deploy window?"},
        ],
    )
    sent = chats(fake)[-1].body["messages"]
    assert sent[0]["content"].startswith("You are terse.\n\nMemory (")
    assert "kb] The deploy window is Friday 18:00 UTC." in sent[0]["content"]
    assert sent[1:] == [{"role": "user", "content": "When is the deploy window?"}]

    await ask(client, "small", "Tell me a joke about penguins.")
    assert "deploy window" not in system_prompt(chats(fake)[-1]), "not similar enough"


async def test_only_the_configured_models_and_agents_remember(
    gw: RunningGateway, fake: FakeOpenAI
) -> None:
    client = gw.openai()
    await ask(client, "plain", "The password is swordfish.")
    await ask(client, "small", "hello")
    items = await memory_items(gw, 1)
    assert [i["content"] for i in items] == ["User: hello\nAssistant: echo: hello"]
    assert system_prompt(chats(fake)[0]) == "", "plain is not in memory.auto.models"


async def test_agents_do_not_recall_each_others_conversations(
    gw: RunningGateway, fake: FakeOpenAI
) -> None:
    sofia = gw.openai(default_headers={"X-Agent-Id": "agent:sofia"})
    pm = gw.openai(default_headers={"X-Agent-Id": "agent:pm"})
    await ask(sofia, "small", "The launch code word is marigold.", "shared")
    await memory_items(gw, 1, agent_id="agent:sofia")
    await ask(pm, "small", "What is the launch code word?", "shared")
    assert "marigold" not in system_prompt(chats(fake)[-1])
    await ask(sofia, "large", "What is the launch code word?")
    assert "marigold" in system_prompt(chats(fake)[-1])
