"""Stored Responses end to end: the official openai SDK's ``responses`` methods against a real
turnout, over a fake OpenAI upstream and a fake Anthropic one (a conversation that moves
between them), keys that must not see each other's responses, a restart, and compaction.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from gateway.keys import connect, create_key
from tests.engines.engines import HELLO_TEXT, LlamaServer
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway


@pytest.fixture
async def openai_up() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=3) as upstream:
        yield upstream


@pytest.fixture
async def claude_up() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as upstream:
        yield upstream


def gateway(
    openai_up: FakeOpenAI,
    claude_up: FakeAnthropic | None = None,
    database: Path | None = None,
    **responses: Any,
) -> AbstractAsyncContextManager[RunningGateway]:
    providers: dict[str, Any] = {"local": {"kind": "openai", "base_url": openai_up.url}}
    models: list[dict[str, Any]] = [
        {"name": "chat", "targets": [{"provider": "local", "model": "ok"}]},
        {"name": "summariser", "targets": [{"provider": "local", "model": "ok"}]},
    ]
    if claude_up is not None:
        providers["claude"] = {"kind": "anthropic", "base_url": claude_up.url, "api_key": "k"}
        models.append({"name": "claude", "targets": [{"provider": "claude", "model": "c-1"}]})
        models.append(
            {"name": "claude-tools", "targets": [{"provider": "claude", "model": "tools"}]}
        )
    raw: dict[str, Any] = {
        "providers": providers,
        "models": models,
        "routing": {"retries": 0},
        "responses": responses,
    }
    if database is not None:
        raw["server"] = {"database": str(database)}
    return running_gateway(config_of(raw))


def chat_posts(upstream: FakeOpenAI | FakeAnthropic) -> list[dict[str, Any]]:
    return [r.body for r in upstream.requests if r.method == "POST"]


async def test_a_stored_conversation_continues_on_another_provider(
    openai_up: FakeOpenAI, claude_up: FakeAnthropic
) -> None:
    async with gateway(openai_up, claude_up) as gw:
        client = gw.openai()
        first = await client.responses.create(
            model="chat", input="my name is Ada", instructions="Be brief."
        )
        second = await client.responses.create(
            model="claude", input="what is my name?", previous_response_id=first.id
        )
        async with client.responses.stream(
            model="chat", input="and again?", previous_response_id=second.id
        ) as stream:
            third = await stream.get_final_response()
        fetched = await client.responses.retrieve(third.id)
    assert first.to_dict()["store"] is True and first.output_text == "echo: my name is Ada"
    assert second.previous_response_id == first.id
    assert second.output_text == "echo: what is my name?"
    # Golden transcript: what the Anthropic upstream was sent for the second turn. The first
    # turn's instructions are not carried over (as OpenAI's previous_response_id does).
    sent = chat_posts(claude_up)[-1]
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "my name is Ada"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "echo: my name is Ada"}]},
        {"role": "user", "content": [{"type": "text", "text": "what is my name?"}]},
    ]
    assert "system" not in sent
    # And back on the OpenAI upstream, streamed: the whole chain, in order.
    assert chat_posts(openai_up)[-1]["messages"] == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "echo: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
        {"role": "assistant", "content": "echo: what is my name?"},
        {"role": "user", "content": "and again?"},
    ]
    assert fetched.id == third.id and fetched.output_text == "echo: and again?"
    assert fetched.previous_response_id == second.id and fetched.status == "completed"


async def test_retrieve_input_items_and_delete(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        client = gw.openai()
        created = await client.responses.create(
            model="chat",
            input=[
                {"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "input_text", "text": "two"}]},
            ],
        )
        fetched = await client.responses.retrieve(created.id)
        newest_first = await client.responses.input_items.list(created.id, limit=2)
        oldest_first = [
            i async for i in client.responses.input_items.list(created.id, order="asc", limit=1)
        ]
        await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError) as gone:
            await client.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError) as continued:
            await client.responses.create(
                model="chat", input="three", previous_response_id=created.id
            )
    assert fetched.model_dump() == created.model_dump()
    assert [i.type for i in newest_first.data] == ["message", "message"]
    assert newest_first.has_more is True
    texts = [item.content[0].text for item in oldest_first]  # type: ignore[union-attr,index]
    assert texts == ["Answer in French.", "one", "two"]
    assert len({item.id for item in oldest_first}) == 3
    assert gone.value.param == "response_id"
    assert continued.value.param == "previous_response_id"


async def test_another_key_gets_a_404_not_a_403(openai_up: FakeOpenAI, tmp_path: Path) -> None:
    database = tmp_path / "turnout.db"
    connection = connect(str(database))
    alice, _ = create_key(connection, "alice", "agent-a")
    bob, _ = create_key(connection, "bob", "agent-b")
    connection.close()
    async with gateway(openai_up, database=database) as gw:
        as_alice, as_bob = gw.openai(api_key=alice), gw.openai(api_key=bob)
        created = await as_alice.responses.create(model="chat", input="secret plans")
        refusals = []
        for attempt in (
            as_bob.responses.retrieve(created.id),
            as_bob.responses.delete(created.id),
            as_bob.responses.create(model="chat", input="x", previous_response_id=created.id),
        ):
            with pytest.raises(openai.NotFoundError) as caught:
                await attempt
            refusals.append(caught.value.status_code)
        with pytest.raises(openai.NotFoundError):
            await as_bob.responses.input_items.list(created.id)
        still_there = await as_alice.responses.retrieve(created.id)
    assert refusals == [404, 404, 404]
    assert still_there.output_text == "echo: secret plans"


async def test_store_false_keeps_nothing_and_carries_encrypted_reasoning(
    openai_up: FakeOpenAI,
) -> None:
    async with gateway(openai_up) as gw:
        client = gw.openai()
        response = await client.responses.create(
            model="chat",
            store=False,
            include=["reasoning.encrypted_content"],
            input=[
                {"role": "user", "content": "hi"},
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "encrypted_content": "gAAAA-opaque",
                },
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ],
        )
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)
    assert response.to_dict()["store"] is False and response.output_text == "echo: again"
    assert [m["role"] for m in chat_posts(openai_up)[-1]["messages"]] == [
        "user",
        "assistant",
        "user",
    ]


async def test_stored_responses_outlive_a_restart(openai_up: FakeOpenAI, tmp_path: Path) -> None:
    database = tmp_path / "turnout.db"
    async with gateway(openai_up, database=database) as gw:
        first = await gw.openai().responses.create(model="chat", input="remember me")
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT id, agent_id, previous_id FROM stored_responses").fetchall()
    assert rows == [(first.id, "local", None)]
    async with gateway(openai_up, database=database) as gw:
        client = gw.openai()
        fetched = await client.responses.retrieve(first.id)
        second = await client.responses.create(
            model="chat", input="who?", previous_response_id=first.id
        )
    assert fetched.output_text == "echo: remember me"
    assert second.output_text == "echo: who?"
    assert len(chat_posts(openai_up)[-1]["messages"]) == 3


async def test_store_off_refuses_previous_response_id_naming_the_field(
    openai_up: FakeOpenAI,
) -> None:
    async with gateway(openai_up, store=False) as gw:
        client = gw.openai()
        response = await client.responses.create(model="chat", input="hi")
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model="chat", input="hi", previous_response_id=response.id
            )
    assert caught.value.param == "previous_response_id"
    assert "responses.store" in caught.value.message


async def test_input_tokens_counts_the_stored_conversation_too(openai_up: FakeOpenAI) -> None:
    async with gateway(openai_up) as gw:
        client = gw.openai()
        first = await client.responses.create(model="chat", input="x" * 400)
        alone = await client.responses.input_tokens.count(model="chat", input="y" * 40)
        continued = await client.responses.input_tokens.count(
            model="chat", input="y" * 40, previous_response_id=first.id
        )
    assert alone.object == "response.input_tokens"
    assert 10 <= alone.input_tokens < continued.input_tokens


async def test_compaction_summarises_with_the_configured_model_and_the_summary_replays(
    openai_up: FakeOpenAI,
) -> None:
    async with gateway(openai_up, summariser="summariser") as gw:
        client = gw.openai()
        first = await client.responses.create(model="chat", input="build a landing page")
        compacted = await client.responses.compact(
            model="chat",
            previous_response_id=first.id,
            input=[{"role": "user", "content": "make it blue"}],
        )
        summariser_saw = chat_posts(openai_up)[-1]
        items = [item.model_dump(exclude_none=True) for item in compacted.output]
        after = await client.responses.create(
            model="chat",
            input=[*items, {"role": "user", "content": "now ship it"}],  # type: ignore[list-item]
        )
    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    assert compacted.usage is not None and compacted.usage.total_tokens > 0
    # The summariser model got one transcript, not the chat turns.
    assert summariser_saw["model"] == "ok" and len(summariser_saw["messages"]) == 2
    transcript = summariser_saw["messages"][1]["content"]
    assert "USER: build a landing page" in transcript
    assert "ASSISTANT: echo: build a landing page" in transcript
    summary = compacted.output[-1]
    assert summary.type == "compaction"
    assert (
        base64.urlsafe_b64decode(summary.encrypted_content.split(".")[-1])
        .decode()
        .startswith("echo: ")
    )
    replayed = chat_posts(openai_up)[-1]["messages"]
    assert [m["role"] for m in replayed] == ["user", "user", "user", "user"]
    assert "Summary of what happened so far" in replayed[2]["content"]
    assert after.output_text == "echo: now ship it"


@pytest.mark.engine
async def test_compaction_on_a_real_local_model(llama_hello: LlamaServer) -> None:
    raw = {
        "providers": {"tiny": {"kind": "llamacpp", "base_url": llama_hello.url + "/v1"}},
        "models": [{"name": "tiny", "targets": [{"provider": "tiny", "model": "tiny-hello"}]}],
        "responses": {"summariser": "tiny"},
    }
    async with running_gateway(config_of(raw)) as gw:
        client: AsyncOpenAI = gw.openai()
        compacted = await client.responses.compact(
            model="gpt-5-codex",
            input=[
                {"role": "user", "content": "fix the failing test"},
                {"role": "assistant", "content": "I ran pytest; test_x fails on a typo."},
            ],
            extra_body={"max_output_tokens": 16},
        )
    summary = compacted.output[-1]
    assert summary.type == "compaction"
    text = base64.urlsafe_b64decode(summary.encrypted_content.split(".")[-1]).decode()
    assert text and HELLO_TEXT.startswith(text[:5])


WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


async def test_a_stored_tool_call_replays_as_chat_tool_history_on_another_provider(
    openai_up: FakeOpenAI, claude_up: FakeAnthropic
) -> None:
    async with gateway(openai_up, claude_up) as gw:
        client = gw.openai()
        asked = await client.responses.create(
            model="claude-tools", input="weather in Paris?", tools=[WEATHER]
        )
        call = asked.output[-1]
        assert call.type == "function_call"
        answered = await client.responses.create(
            model="chat",
            previous_response_id=asked.id,
            tools=[WEATHER],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        )
    # Golden transcript: the Anthropic turn's text and tool call, then the tool's output, as
    # the OpenAI upstream's chat history.
    assert chat_posts(openai_up)[-1]["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"},
    ]
    assert answered.previous_response_id == asked.id
