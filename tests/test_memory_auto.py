"""Automatic memory end to end: real gateway, real memory parts, a fake upstream that records
what it was sent, so the memory the plugin put in front of the latest user message can be read
back (not into the system prompt: that would change the prompt's prefix every turn)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionSystemMessageParam

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


def latest_user(request: RecordedRequest) -> str:
    """The latest user message as the upstream got it: the recalled memory, then the text."""
    users = [m for m in request.body["messages"] if m["role"] == "user"]
    content: str = users[-1]["content"]
    return content


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
    prompt = latest_user(chats(fake)[-1])
    assert "Earlier in this conversation:\nUser: My name is Ada and I sail." in prompt
    items = await memory_items(gw, 2)
    assert items[0]["meta"]["model"] == "large"
    # Remembered as the client asked it; the fake's echo also repeats the recalled block.
    assert items[0]["content"].startswith("User: What do I do on weekends?\nAssistant: echo: ")
    assert items[0]["content"].endswith("\n\nWhat do I do on weekends?")

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
    assert "Earlier in this conversation" not in latest_user(chats(fake)[-1])


async def test_relevant_memories_go_in_front_of_the_latest_user_message(
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
    assert sent[0] == {"role": "system", "content": "You are terse."}, "the prefix stays put"
    assert sent[1]["role"] == "user" and len(sent) == 2
    assert sent[1]["content"].startswith("Memory (")
    assert "kb] The deploy window is Friday 18:00 UTC." in sent[1]["content"]
    assert sent[1]["content"].endswith("\n\nWhen is the deploy window?")
    (remembered,) = await memory_items(gw, 1, kinds=["conversation"])
    assert remembered["content"].startswith("User: When is the deploy window?\nAssistant:")

    await ask(client, "small", "Tell me a joke about penguins.")
    assert "deploy window" not in latest_user(chats(fake)[-1]), "not similar enough"


async def test_only_the_configured_models_and_agents_remember(
    gw: RunningGateway, fake: FakeOpenAI
) -> None:
    client = gw.openai()
    await ask(client, "plain", "The password is swordfish.")
    await ask(client, "small", "hello")
    items = await memory_items(gw, 1)
    assert [i["content"] for i in items] == ["User: hello\nAssistant: echo: hello"]
    assert chats(fake)[0].body["messages"] == [
        {"role": "user", "content": "The password is swordfish."}
    ], "plain is not in memory.auto.models"


async def test_agents_do_not_recall_each_others_conversations(
    gw: RunningGateway, fake: FakeOpenAI
) -> None:
    sofia = gw.openai(default_headers={"X-Agent-Id": "agent:sofia"})
    pm = gw.openai(default_headers={"X-Agent-Id": "agent:pm"})
    await ask(sofia, "small", "The launch code word is marigold.", "shared")
    await memory_items(gw, 1, agent_id="agent:sofia")
    await ask(pm, "small", "What is the launch code word?", "shared")
    assert "marigold" not in latest_user(chats(fake)[-1])
    await ask(sofia, "large", "What is the launch code word?")
    assert "marigold" in latest_user(chats(fake)[-1])


async def test_recall_leaves_the_prompt_prefix_byte_stable_from_turn_to_turn(
    gw: RunningGateway, fake: FakeOpenAI
) -> None:
    """An engine's prefix cache serves everything before the first changed token: recalled
    memory changes every turn, so it must not sit in the system prompt at the front."""
    async with aiohttp.ClientSession() as session:
        for fact in ("The deploy window is Friday 18:00 UTC.", "Deploys need two approvals."):
            await session.post(gw.url + "/v1/memory/store", json={"content": fact, "kind": "kb"})
    client = gw.openai()
    system: ChatCompletionSystemMessageParam = {
        "role": "system",
        "content": "You are a release engineer. " * 20,
    }
    history: list[ChatCompletionMessageParam] = [system]
    for question in ("When is the deploy window?", "How many approvals does a deploy need?"):
        history.append({"role": "user", "content": question})
        reply = await client.chat.completions.create(
            model="small", messages=history, extra_body={"metadata": {"session_id": "s-9"}}
        )
        history.append({"role": "assistant", "content": reply.choices[0].message.content})
    first, second = (r.body["messages"] for r in chats(fake)[-2:])
    assert first[0] == second[0] == system
    # Only the latest user message carries memory; everything before it is what the client
    # sent, so turn two's prompt starts with exactly turn one's system prompt.
    assert second[:-1] == history[:-2]
    assert second[-1]["content"].startswith("Memory (")
    assert second[-1]["content"].endswith("\n\nHow many approvals does a deploy need?")
    assert "Deploys need two approvals." in second[-1]["content"]
