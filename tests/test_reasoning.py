"""Reasoning across protocols, end to end: a scripted model that thinks (llama-server's
``reasoning_content``, or ``<think>`` tags left in its text) seen as thinking blocks by the
anthropic SDK and as reasoning items by the openai SDK; thinking sent back in a history; native
Anthropic signatures untouched; reasoning tokens in usage rows and metrics.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import aiohttp
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam, ThinkingConfigEnabledParam

from gateway.translate.reasoning import TURNOUT_SIGNATURE
from tests.fakes.anthropic_upstream import THOUGHT as CLAUDE_THOUGHT
from tests.fakes.anthropic_upstream import FakeAnthropic, signature_for
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

THOUGHT = "The user says hi; a greeting back is polite."
THINKING: ThinkingConfigEnabledParam = {"type": "enabled", "budget_tokens": 1024}
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]
TAGGED = "<think>Plan: greet.</think>Hello!"


@pytest.fixture
async def engine() -> AsyncIterator[FakeOpenAI]:
    """A llama-server that thinks (its reasoning_content), 6 deltas a text."""
    async with FakeOpenAI(flavor="llamacpp", stream_chunks=6) as upstream:
        upstream.reasoning = THOUGHT
        yield upstream


@pytest.fixture
async def plain() -> AsyncIterator[FakeOpenAI]:
    """An engine that leaves thinking in its text (the echo repeats the user's <think> tags)."""
    async with FakeOpenAI(flavor="llamacpp", stream_chunks=7) as upstream:
        yield upstream


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="sk-ant-test") as upstream:
        yield upstream


def gateway(
    engine: FakeOpenAI, plain: FakeOpenAI | None = None, claude: FakeAnthropic | None = None
) -> AbstractAsyncContextManager[RunningGateway]:
    providers: dict[str, Any] = {
        "engine": {"kind": "llamacpp", "base_url": engine.url, "local": True},
        # The same server as OpenAI's own API: it does not read reasoning_content.
        "openai": {"kind": "openai", "base_url": engine.url, "api_key": "sk-test"},
    }
    models: list[dict[str, Any]] = [
        {"name": "thinker", "targets": [{"provider": "engine", "model": "ok"}]},
        {"name": "gpt", "targets": [{"provider": "openai", "model": "ok"}]},
    ]
    if plain is not None:
        providers["tagged"] = {
            "kind": "llamacpp",
            "base_url": plain.url,
            "local": True,
            "reasoning": {"think_tags": True},
        }
        models.append({"name": "tagger", "targets": [{"provider": "tagged", "model": "ok"}]})
    if claude is not None:
        providers["claude"] = {
            "kind": "anthropic",
            "base_url": claude.url,
            "api_key": "sk-ant-test",
        }
        models.append({"name": "opus", "targets": [{"provider": "claude", "model": "thinking"}]})
    raw = {"providers": providers, "models": models, "routing": {"retries": 0}}
    return running_gateway(config_of(raw))


def anthropic_client(gw: RunningGateway) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)


def last_post(upstream: FakeOpenAI | FakeAnthropic) -> dict[str, Any]:
    body: dict[str, Any] = [r for r in upstream.requests if r.method == "POST"][-1].body
    return body


# --- a local model's thinking, seen by Claude Code's SDK -----------------------------------------


async def test_llama_reasoning_content_is_a_signed_thinking_block_streamed_and_whole(
    engine: FakeOpenAI,
) -> None:
    async with gateway(engine) as gw:
        client = anthropic_client(gw)
        whole = await client.messages.create(
            model="thinker",
            max_tokens=256,
            thinking=THINKING,
            messages=HI,
        )
        async with client.messages.stream(
            model="thinker",
            max_tokens=256,
            thinking=THINKING,
            messages=HI,
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_message()
        await client.close()
    for message in (whole, final):
        thinking, text = list[Any](message.content)
        assert thinking.type == "thinking" and thinking.thinking == THOUGHT
        assert thinking.signature == TURNOUT_SIGNATURE
        assert text.type == "text" and text.text == "echo: hi"
    assert "thinking" in kinds and "signature" in kinds


async def test_think_tags_split_across_chunks_become_thinking_for_the_anthropic_sdk(
    engine: FakeOpenAI, plain: FakeOpenAI
) -> None:
    async with gateway(engine, plain) as gw:
        client = anthropic_client(gw)
        question: list[MessageParam] = [{"role": "user", "content": TAGGED}]
        whole = await client.messages.create(
            model="tagger",
            max_tokens=256,
            thinking=THINKING,
            messages=question,
        )
        async with client.messages.stream(
            model="tagger",
            max_tokens=256,
            thinking=THINKING,
            messages=question,
        ) as stream:
            final = await stream.get_final_message()
        await client.close()

    def blocks(message: Any) -> list[tuple[str, str]]:
        return [(b.type, getattr(b, "thinking", None) or b.text) for b in message.content]

    # A whole answer puts its thinking first; a stream keeps the order it came in (the fake's
    # "echo: " before the think block).
    assert blocks(whole) == [("thinking", "Plan: greet."), ("text", "echo: Hello!")]
    assert blocks(final) == [("text", "echo: "), ("thinking", "Plan: greet."), ("text", "Hello!")]


# --- the same thinking, seen by Codex's SDK --------------------------------------------------------


async def test_reasoning_items_for_the_openai_sdk_as_content_or_as_summary(
    engine: FakeOpenAI,
) -> None:
    async with gateway(engine) as gw:
        client = gw.openai()
        whole = await client.responses.create(model="thinker", input="hi")
        stream = await client.responses.create(
            model="thinker", input="hi", stream=True, reasoning={"summary": "auto"}
        )
        events = [event async for event in stream]
    item = whole.output[0]
    assert item.type == "reasoning" and item.content is not None
    assert [c.text for c in item.content] == [THOUGHT]
    assert whole.output_text == "echo: hi"
    kinds = [e.type for e in events]
    assert "response.reasoning_summary_part.added" in kinds
    deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(deltas) == THOUGHT and len(deltas) > 1
    completed = events[-1]
    assert completed.type == "response.completed"
    summarized = completed.response.output[0]
    assert summarized.type == "reasoning" and [s.text for s in summarized.summary] == [THOUGHT]
    usage = completed.response.usage
    assert (
        usage is not None
        and 0 < usage.output_tokens_details.reasoning_tokens <= usage.output_tokens
    )
    assert whole.usage is not None and whole.usage.output_tokens_details.reasoning_tokens > 0


async def test_think_tags_become_reasoning_text_deltas_for_the_openai_sdk(
    engine: FakeOpenAI, plain: FakeOpenAI
) -> None:
    async with gateway(engine, plain) as gw:
        stream = await gw.openai().responses.create(model="tagger", input=TAGGED, stream=True)
        events = [event async for event in stream]
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert thought == "Plan: greet." and text == "echo: Hello!"


# --- thinking sent back in a history ---------------------------------------------------------------


HISTORY: list[Any] = [
    {"role": "user", "content": "hi"},
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": THOUGHT, "signature": TURNOUT_SIGNATURE},
            {"type": "redacted_thinking", "data": "ciphertext"},
            {"type": "text", "text": "Hello!"},
        ],
    },
    {"role": "user", "content": "again"},
]


async def test_thinking_blocks_in_a_history_reach_llama_as_reasoning_content_and_openai_not(
    engine: FakeOpenAI,
) -> None:
    async with gateway(engine) as gw:
        client = anthropic_client(gw)
        for model in ("thinker", "gpt"):
            await client.messages.create(model=model, max_tokens=64, messages=HISTORY)
            sent = last_post(engine)["messages"]
            assert sent[1]["content"] == "Hello!"
            assert sent[1].get("reasoning_content") == (THOUGHT if model == "thinker" else None)
        await client.close()


async def test_reasoning_items_in_a_responses_history_reach_llama_as_reasoning_content(
    engine: FakeOpenAI,
) -> None:
    history: list[Any] = [
        {"role": "user", "content": "list files"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "Use ls."}],
        },
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"cmd":"ls"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
        {
            "type": "reasoning",
            "id": "rs_2",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "Done."}],
        },
        {"role": "assistant", "content": [{"type": "output_text", "text": "One file."}]},
        {"role": "user", "content": "thanks"},
    ]
    async with gateway(engine) as gw:
        await gw.openai().responses.create(model="thinker", input=history)
    sent = last_post(engine)["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "c1" and sent[1]["reasoning_content"] == "Use ls."
    assert sent[3] == {"role": "assistant", "content": "One file.", "reasoning_content": "Done."}


# --- native Anthropic: signatures untouched ------------------------------------------------------


async def test_anthropic_signatures_pass_untouched_and_unsigned_thinking_never_reaches_anthropic(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> None:
    signed = {"type": "thinking", "thinking": "Earlier.", "signature": "EqQBCkYIBxgCKkDsig"}
    history: list[Any] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [signed, {"type": "text", "text": "Hello!"}]},
        {"role": "user", "content": "and?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "local", "signature": TURNOUT_SIGNATURE},
                {"type": "text", "text": "Local answer."},
            ],
        },
        {"role": "user", "content": "again"},
    ]
    async with gateway(engine, claude=claude) as gw:
        client = anthropic_client(gw)
        whole = await client.messages.create(
            model="opus",
            max_tokens=256,
            thinking=THINKING,
            messages=history,
        )
        async with client.messages.stream(
            model="opus",
            max_tokens=256,
            thinking=THINKING,
            messages=history,
        ) as stream:
            final = await stream.get_final_message()
        await client.close()
    for message in (whole, final):
        block: Any = message.content[0]
        assert block.type == "thinking" and block.signature == signature_for(CLAUDE_THOUGHT)
    sent = last_post(claude)["messages"]
    assert sent[1]["content"][0] == signed
    assert sent[3]["content"] == [{"type": "text", "text": "Local answer."}]


# --- tokens and fields ------------------------------------------------------------------------------


async def test_reasoning_tokens_land_in_usage_rows_and_metrics(
    engine: FakeOpenAI, plain: FakeOpenAI
) -> None:
    async with gateway(engine, plain) as gw:
        database = gw.config.server.database
        client = anthropic_client(gw)
        await client.messages.create(
            model="thinker",
            max_tokens=256,
            thinking=THINKING,
            messages=HI,
        )
        await client.close()
        stream = await gw.openai().responses.create(model="tagger", input=TAGGED, stream=True)
        _ = [event async for event in stream]
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/metrics") as response:
                metrics = await response.text()
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT model, reasoning_tokens, completion_tokens FROM usage ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == ["thinker", "tagger"]
    for _, reasoning, completion in rows:
        assert 0 < reasoning <= completion
    assert 'turnout_tokens_total{model="thinker",type="reasoning"}' in metrics


async def test_ignored_fields_are_named_in_a_header_and_mapped_ones_reach_the_upstream(
    engine: FakeOpenAI,
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    async with gateway(engine) as gw:
        raw = await gw.openai().responses.with_raw_response.create(
            model="thinker",
            input="hi",
            service_tier="flex",
            prompt_cache_key="conv-7",
            text=cast(Any, {"format": {"type": "json_schema", "name": "out", "schema": schema}}),
            max_output_tokens=50,
        )
    assert raw.headers["x-turnout-ignored"] == "service_tier"
    sent = last_post(engine)
    assert sent["prompt_cache_key"] == "conv-7" and sent["max_tokens"] == 50
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema},
    }
    assert "service_tier" not in sent


async def test_a_role_with_think_tags_splits_them_for_a_plain_chat_client(
    plain: FakeOpenAI,
) -> None:
    role = {
        "engine": "external",
        "model": "m",
        "base_url": plain.url,
        "reasoning": {"think_tags": True},
    }
    async with running_gateway(config_of({"roles": {"thinker": role}})) as gw:
        chat = gw.openai().chat.completions
        whole = await chat.create(model="thinker", messages=[{"role": "user", "content": TAGGED}])
        stream = await chat.create(
            model="thinker", messages=[{"role": "user", "content": TAGGED}], stream=True
        )
        deltas = [c.choices[0].delta async for c in stream if c.choices]
    message: Any = whole.choices[0].message
    assert message.content == "echo: Hello!" and message.reasoning_content == "Plan: greet."
    thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert thought == "Plan: greet."
    assert "".join(d.content or "" for d in deltas) == "echo: Hello!"


def test_reasoning_settings_with_an_unknown_key_name_the_key_path() -> None:
    role = {"engine": "external", "model": "m", "base_url": "http://h/v1"}
    with pytest.raises(Exception, match=r"roles\[\.\.\.\]\.reasoning: unknown key `think`"):
        config_of({"roles": {"x": {**role, "reasoning": {"think": True}}}})


async def test_the_same_prompt_cache_key_reaches_the_same_weighted_target(
    engine: FakeOpenAI,
) -> None:
    providers = {
        name: {"kind": "llamacpp", "base_url": engine.url, "local": True} for name in ("a", "b")
    }
    targets = [{"provider": name, "model": "ok"} for name in ("a", "b")]
    raw = {
        "providers": providers,
        "models": [{"name": "m", "targets": targets, "balance": "weighted"}],
    }
    async with running_gateway(config_of(raw)) as gw:
        responses = gw.openai().responses

        async def target(key: str) -> str:
            reply = await responses.with_raw_response.create(
                model="m", input="hi", prompt_cache_key=key
            )
            return reply.headers["x-turnout-target"]

        same = {await target("conversation-1") for _ in range(6)}
        spread = {await target(f"conversation-{i}") for i in range(12)}
    assert len(same) == 1
    assert spread == {"a/ok", "b/ok"}


async def test_messages_fields_a_chat_upstream_cannot_honour_are_named_in_the_header(
    engine: FakeOpenAI,
) -> None:
    body = {
        "model": "thinker",
        "max_tokens": 32,
        "messages": HI,
        "service_tier": "auto",
        "top_k": 5,
        "metadata": {"user_id": "user_1_account_2_session_3"},
    }
    async with gateway(engine) as gw, aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/messages", json=body) as response:
            assert response.status == 200
            assert response.headers["x-turnout-ignored"] == "service_tier,top_k"
    sent = last_post(engine)
    assert not {"service_tier", "top_k", "metadata"} & set(sent)
