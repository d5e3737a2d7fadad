"""Thinking that goes out to a client and comes back on its next turn, through the official
openai SDK: a local model's thinking sealed in a Responses reasoning item's
``encrypted_content`` (Codex: ``store: false``, ``include: ["reasoning.encrypted_content"]``),
and Anthropic's signed thinking carried through chat (``thinking_blocks``) and Responses back to
an Anthropic upstream that checks its own signatures (tests/fakes/anthropic_upstream.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import openai
import pytest

from gateway.translate.reasoning_seal import seal_text, unseal
from tests.fakes.anthropic_upstream import (
    REDACTED_THINKING,
    THINKING,
    THOUGHT,
    FakeAnthropic,
    signature_for,
)
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

LOCAL_THOUGHT = "The user says hi; a greeting back is polite."
INCLUDE: Any = ["reasoning.encrypted_content"]


@pytest.fixture
async def engine() -> AsyncIterator[FakeOpenAI]:
    """A llama-server that thinks (its reasoning_content)."""
    async with FakeOpenAI(flavor="llamacpp", stream_chunks=4) as upstream:
        upstream.reasoning = LOCAL_THOUGHT
        yield upstream


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="sk-ant-test") as upstream:
        yield upstream


def gateway(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> AbstractAsyncContextManager[RunningGateway]:
    providers: dict[str, Any] = {
        "engine": {"kind": "llamacpp", "base_url": engine.url, "local": True},
        "claude": {"kind": "anthropic", "base_url": claude.url, "api_key": "sk-ant-test"},
    }
    models: list[dict[str, Any]] = [
        {"name": "thinker", "targets": [{"provider": "engine", "model": "ok"}]},
        {"name": "opus", "targets": [{"provider": "claude", "model": THINKING}]},
        {"name": "opus-redacted", "targets": [{"provider": "claude", "model": REDACTED_THINKING}]},
    ]
    raw = {"providers": providers, "models": models, "routing": {"retries": 0}}
    return running_gateway(config_of(raw))


def posts(upstream: FakeOpenAI | FakeAnthropic) -> list[dict[str, Any]]:
    return [r.body for r in upstream.requests if r.method == "POST"]


def items_of(output: list[Any]) -> list[Any]:
    """A Response's output as the next request's input, the way Codex keeps it."""
    return [item.model_dump(exclude_none=True) for item in output]


async def final_response(stream: Any) -> Any:
    final = None
    async for event in stream:
        if event.type == "response.completed":
            final = event.response
    assert final is not None
    return final


# --- a local model's thinking, stateless (Codex) ----------------------------------------------------


async def test_codex_stateless_turn_gets_sealed_thinking_and_llama_sees_it_again(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> None:
    async with gateway(engine, claude) as gw:
        client = gw.openai()
        whole = await client.responses.create(
            model="thinker", input="hi", store=False, include=INCLUDE
        )
        streamed = await final_response(
            await client.responses.create(
                model="thinker",
                input="hi",
                store=False,
                include=INCLUDE,
                stream=True,
                reasoning={"summary": "auto"},
            )
        )
        for response in (whole, streamed):
            reasoning: Any = response.output[0]
            assert reasoning.type == "reasoning"
            assert reasoning.encrypted_content == seal_text(LOCAL_THOUGHT)
        # Codex sends back summary and encrypted_content; the text comes from the latter.
        history = items_of(streamed.output)
        history[0]["summary"] = []
        await client.responses.create(
            model="thinker",
            input=[
                {"role": "user", "content": "hi"},
                *history,
                {"role": "user", "content": "and?"},
            ],
            store=False,
            include=INCLUDE,
        )
    sent = posts(engine)[-1]["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["reasoning_content"] == LOCAL_THOUGHT
    assert all("thinking_blocks" not in m for m in sent)


async def test_without_include_a_local_models_reasoning_item_has_no_encrypted_content(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> None:
    async with gateway(engine, claude) as gw:
        response = await gw.openai().responses.create(model="thinker", input="hi", store=False)
    reasoning: Any = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content is None


async def test_openai_ciphertext_turnout_cannot_read_falls_back_to_the_visible_text(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> None:
    history: list[Any] = [
        {"role": "user", "content": "hi"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "Greet back."}],
            "encrypted_content": "gAAAAABoOpenAIsOwnCiphertext==",
        },
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "user", "content": "and?"},
    ]
    async with gateway(engine, claude) as gw:
        await gw.openai().responses.create(model="thinker", input=history, store=False)
    sent = posts(engine)[-1]["messages"]
    assert sent[1] == {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."}


def test_a_damaged_seal_reads_as_none() -> None:
    sealed = seal_text("plan")
    assert unseal(sealed) == [unseal(sealed)[0]]  # type: ignore[index]
    assert unseal(sealed[:-3] + "!!!") is None
    assert unseal("turnout.r1." + base64.urlsafe_b64encode(b"{}").decode()) is None


# --- Anthropic's signed thinking through OpenAI chat -------------------------------------------------


async def test_chat_client_gets_signed_thinking_it_can_send_back_to_anthropic(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> None:
    signed = {"type": "thinking", "thinking": THOUGHT, "signature": signature_for(THOUGHT)}
    async with gateway(engine, claude) as gw:
        client = gw.openai()
        whole = await client.chat.completions.create(
            model="opus", messages=[{"role": "user", "content": "hi"}]
        )
        message = whole.choices[0].message
        assert (message.model_extra or {})["thinking_blocks"] == [signed]
        streamed: list[Any] = []
        stream = await client.chat.completions.create(
            model="opus", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for chunk in stream:
            if chunk.choices:
                streamed.extend(
                    (chunk.choices[0].delta.model_extra or {}).get("thinking_blocks", [])
                )
        assert streamed == [signed]
        back: Any = {
            "role": "assistant",
            "content": message.content,
            "reasoning_content": THOUGHT,
            "thinking_blocks": streamed,
        }
        turn: Any = [{"role": "user", "content": "hi"}, back, {"role": "user", "content": "and?"}]
        await client.chat.completions.create(model="opus", messages=turn)
        assert posts(claude)[-1]["messages"][1]["content"][0] == signed
        # An altered thought is refused by Anthropic, as it is by the real API.
        back["thinking_blocks"] = [{**signed, "thinking": "Something else."}]
        with pytest.raises(openai.BadRequestError, match="signature"):
            await client.chat.completions.create(model="opus", messages=turn)


# --- Anthropic's signed thinking through Responses ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_client_round_trips_signed_and_redacted_thinking_to_anthropic(
    engine: FakeOpenAI, claude: FakeAnthropic, stream: bool
) -> None:
    async with gateway(engine, claude) as gw:
        client = gw.openai()
        if stream:
            first = await final_response(
                await client.responses.create(
                    model="opus-redacted", input="hi", store=False, stream=True
                )
            )
        else:
            first = await client.responses.create(model="opus-redacted", input="hi", store=False)
        reasoning: Any = first.output[0]
        assert reasoning.type == "reasoning" and reasoning.encrypted_content
        answer = posts(claude)[-1]
        history = [{"role": "user", "content": "hi"}, *items_of(first.output)]
        await client.responses.create(
            model="opus", input=[*history, {"role": "user", "content": "and?"}], store=False
        )
        # The same conversation continued on the local model: its thinking as text only.
        await client.responses.create(
            model="thinker", input=[*history, {"role": "user", "content": "and?"}], store=False
        )
    assert "thinking_blocks" not in str(answer)
    sent = posts(claude)[-1]["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": THOUGHT, "signature": signature_for(THOUGHT)}
    assert sent[1]["type"] == "redacted_thinking" and sent[1]["data"].startswith("fake-sig.")
    assert sent[2]["type"] == "text"
    local = posts(engine)[-1]["messages"]
    assert local[1]["reasoning_content"] == THOUGHT
    assert all("thinking_blocks" not in m for m in local)


async def test_stored_responses_keep_anthropic_signatures_for_previous_response_id(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> None:
    async with gateway(engine, claude) as gw:
        client = gw.openai()
        first = await client.responses.create(model="opus", input="hi")
        await client.responses.create(model="opus", input="and?", previous_response_id=first.id)
    sent = posts(claude)[-1]["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": THOUGHT, "signature": signature_for(THOUGHT)}


async def test_a_stored_conversation_moves_anthropic_to_llama_and_back_keeping_signatures(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> None:
    async with gateway(engine, claude) as gw:
        client = gw.openai()
        first = await client.responses.create(model="opus", input="hi")
        second = await client.responses.create(
            model="thinker", input="and?", previous_response_id=first.id
        )
        await client.responses.create(model="opus", input="again", previous_response_id=second.id)
    local = posts(engine)[-1]["messages"]
    assert local[1]["reasoning_content"] == THOUGHT and "thinking_blocks" not in local[1]
    turns = posts(claude)[-1]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    signed = {"type": "thinking", "thinking": THOUGHT, "signature": signature_for(THOUGHT)}
    assert turns[1]["content"][0] == signed
    # The local model's thinking has no Anthropic signature: Anthropic is sent its text only.
    assert [b["type"] for b in turns[3]["content"]] == ["text"]


async def test_codex_over_a_websocket_continues_by_id_with_anthropics_signature_intact(
    engine: FakeOpenAI, claude: FakeAnthropic
) -> None:
    async def turn(socket: aiohttp.ClientWebSocketResponse, **request: Any) -> dict[str, Any]:
        await socket.send_str(json.dumps({"type": "response.create", **request}))
        while True:
            frame: dict[str, Any] = json.loads(await socket.receive_str(timeout=20))
            if frame["type"] in ("response.completed", "response.failed", "error"):
                return frame

    async with gateway(engine, claude) as gw:
        url = gw.url.replace("http://", "ws://") + "/v1/responses"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as socket:
            codex = {
                "store": False,
                "include": INCLUDE,
                "stream": True,
                "reasoning": {"effort": "medium", "summary": "auto"},
            }
            first = await turn(socket, model="opus", input="hi", **codex)
            first_id = first["response"]["id"]
            second = await turn(
                socket, model="opus", input="and?", previous_response_id=first_id, **codex
            )
    assert first["response"]["output"][0]["encrypted_content"].startswith("turnout.r1.")
    assert second["type"] == "response.completed"
    body = posts(claude)[-1]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    sent = body["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": THOUGHT, "signature": signature_for(THOUGHT)}
