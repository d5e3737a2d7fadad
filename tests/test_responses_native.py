"""Responses requests to an upstream that speaks Responses itself (``responses_api``): the
client's body goes on as it came and the answer comes back unchanged, through the official
openai SDK, against a fake OpenAI Responses API (tests/fakes/responses_upstream.py) and a plain
chat upstream for the translated paths (replay on another model, fallback).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import openai
import pytest

from adapters.base import WireProtocol
from adapters.builtin import default_registry
from adapters.openai_compat import OpenAIAdapter
from gateway.config.upstreams import Provider
from gateway.errors import UpstreamProtocolError
from gateway.preflight import preflight
from gateway.translate.responses_native import NativeEvents, native_request
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.responses_upstream import FakeResponses
from tests.gateway_server import RunningGateway, config_of, running_gateway


@pytest.fixture
async def oai() -> AsyncIterator[FakeResponses]:
    async with FakeResponses() as upstream:
        yield upstream


@pytest.fixture
async def chat() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=3) as upstream:
        yield upstream


def gateway(oai: FakeResponses, chat: FakeOpenAI) -> AbstractAsyncContextManager[RunningGateway]:
    raw: dict[str, Any] = {
        "providers": {
            "oai": {"kind": "openai", "base_url": oai.url, "api_key": "k", "responses_api": True},
            "local": {"kind": "openai", "base_url": chat.url},
        },
        "models": [
            {"name": "gpt", "targets": [{"provider": "oai", "model": "gpt-5"}]},
            {"name": "small", "targets": [{"provider": "local", "model": "ok"}]},
            {"name": "refused", "targets": [{"provider": "oai", "model": "error-400"}]},
            {
                "name": "sturdy",
                "targets": [
                    {"provider": "oai", "model": "error-503", "priority": 0},
                    {"provider": "local", "model": "ok", "priority": 1},
                ],
            },
        ],
        "routing": {"retries": 0},
    }
    return running_gateway(config_of(raw))


def chat_posts(upstream: FakeOpenAI) -> list[dict[str, Any]]:
    return [r.body for r in upstream.requests if r.method == "POST"]


async def test_a_response_is_answered_by_the_upstreams_own_responses_api(
    oai: FakeResponses, chat: FakeOpenAI
) -> None:
    async with gateway(oai, chat) as gw:
        database = gw.config.server.database
        answer = await gw.openai().responses.create(
            model="gpt", input="hi", instructions="Be brief.", metadata={"k": "v"}
        )
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/metrics") as response:
                metrics = await response.text()
    sent = oai.posts()
    posted = oai.post_requests()
    assert len(sent) == 1 and posted[0].path == "/v1/responses"
    # The body as the client sent it, but for the target's model name.
    assert sent[0]["model"] == "gpt-5"
    assert sent[0]["input"] == "hi" and sent[0]["instructions"] == "Be brief."
    assert sent[0]["metadata"] == {"k": "v"}
    assert posted[0].headers["authorization"] == "Bearer k"
    # The upstream's Response, unchanged: its id, its model name, its usage.
    assert answer.id in oai.stored and answer.model == "gpt-5"
    assert answer.output_text == "echo: hi (turn 1)"
    assert answer.usage is not None and answer.usage.input_tokens == 11
    assert chat_posts(chat) == []
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT model, prompt_tokens, completion_tokens, reasoning_tokens FROM usage"
        ).fetchall()
    assert rows == [("gpt", 11, 7, 2)]
    assert 'turnout_tokens_total{model="gpt",type="reasoning"}' in metrics


async def test_a_streamed_response_is_relayed_event_for_event(
    oai: FakeResponses, chat: FakeOpenAI
) -> None:
    async with gateway(oai, chat) as gw:
        database = gw.config.server.database
        client = gw.openai()
        async with client.responses.stream(model="gpt", input="stream me") as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        raw = await client.responses.create(model="gpt", input="again", stream=True)
        events = [event async for event in raw]
        fetched = await client.responses.retrieve(final.id)
    assert oai.posts()[0]["stream"] is True
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "echo: stream me (turn 1)" and final.id in oai.stored
    assert [e.sequence_number for e in events] == list(range(10))
    # Kept by turnout too (store: true), under the upstream's id.
    assert fetched.output_text == final.output_text
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT prompt_tokens, reasoning_tokens, stream FROM usage").fetchall()
    assert rows == [(11, 2, 1), (11, 2, 1)]


async def test_a_continuation_on_the_same_provider_passes_the_upstreams_id_on(
    oai: FakeResponses, chat: FakeOpenAI
) -> None:
    async with gateway(oai, chat) as gw:
        client = gw.openai()
        first = await client.responses.create(model="gpt", input="my name is Ada")
        second = await client.responses.create(
            model="gpt", input="what is my name?", previous_response_id=first.id
        )
        async with client.responses.stream(
            model="gpt", input="and now?", previous_response_id=second.id
        ) as stream:
            third = await stream.get_final_response()
    sent = oai.posts()
    assert sent[1]["previous_response_id"] == first.id
    assert sent[1]["input"] == "what is my name?"  # nothing replayed: the upstream holds it
    assert sent[2]["previous_response_id"] == second.id
    assert second.output_text == "echo: what is my name? (turn 2)"
    assert third.output_text == "echo: and now? (turn 3)"


async def test_a_continuation_on_another_model_replays_the_stored_conversation(
    oai: FakeResponses, chat: FakeOpenAI
) -> None:
    async with gateway(oai, chat) as gw:
        client = gw.openai()
        first = await client.responses.create(model="gpt", input="my name is Ada")
        second = await client.responses.create(
            model="small", input="what is my name?", previous_response_id=first.id
        )
        # Back on the Responses provider, continuing a turn it did not answer: replayed too.
        third = await client.responses.create(
            model="gpt", input="and again?", previous_response_id=second.id
        )
    posted = oai.post_requests()
    assert [r.path for r in posted] == ["/v1/responses", "/v1/chat/completions"]
    assert [m["content"] for m in posted[1].body["messages"]] == [
        "my name is Ada",
        "echo: my name is Ada (turn 1)",
        "what is my name?",
        "echo: what is my name?",
        "and again?",
    ]
    assert third.output_text == "echo: and again? (chat)"
    assert chat_posts(chat)[0]["messages"] == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "echo: my name is Ada (turn 1)"},
        {"role": "user", "content": "what is my name?"},
    ]
    assert second.previous_response_id == first.id
    assert second.output_text == "echo: what is my name?"


async def test_encrypted_reasoning_goes_back_to_openai_unchanged(
    oai: FakeResponses, chat: FakeOpenAI
) -> None:
    async with gateway(oai, chat) as gw:
        client = gw.openai()
        first = await client.responses.create(
            model="gpt", input="think", store=False, include=["reasoning.encrypted_content"]
        )
        reasoning = first.output[0].to_dict()
        assert reasoning["type"] == "reasoning"
        history = [item.to_dict() for item in first.output]
        await client.responses.create(
            model="gpt",
            input=[*history, {"role": "user", "content": "go on"}],  # type: ignore[list-item]
            store=False,
            include=["reasoning.encrypted_content"],
        )
    assert reasoning["encrypted_content"] == f"enc:{first.id}"
    assert oai.encrypted_seen == [f"enc:{first.id}"]
    assert oai.posts()[1]["input"][0] == reasoning


async def test_a_failing_responses_target_falls_back_to_a_chat_one(
    oai: FakeResponses, chat: FakeOpenAI
) -> None:
    async with gateway(oai, chat) as gw:
        client = gw.openai()
        whole = await client.responses.create(model="sturdy", input="hi")
        async with client.responses.stream(model="sturdy", input="hi again") as stream:
            streamed = await stream.get_final_response()
        continued = await client.responses.create(
            model="small", input="and?", previous_response_id=whole.id
        )
    # The second request may skip the target, cooling down after its 503.
    assert oai.posts()[0]["model"] == "error-503"
    assert [p["messages"][-1]["content"] for p in chat_posts(chat)] == ["hi", "hi again", "and?"]
    assert whole.output_text == "echo: hi" and whole.id not in oai.stored
    assert streamed.output_text == "echo: hi again"
    assert continued.output_text == "echo: and?"


async def test_an_upstream_refusal_reaches_the_client_in_openais_envelope(
    oai: FakeResponses, chat: FakeOpenAI
) -> None:
    async with gateway(oai, chat) as gw:
        with pytest.raises(openai.BadRequestError) as refused:
            await gw.openai().responses.create(model="refused", input="hi")
    body = refused.value.body
    assert isinstance(body, dict) and "scripted error-400" in str(body.get("message"))


def test_responses_api_is_refused_on_a_kind_that_does_not_speak_it() -> None:
    providers = {
        "claude": Provider(kind="anthropic", base_url="https://x", responses_api=True),
        "oai": Provider(kind="openai", base_url="https://x", responses_api=True),
    }
    assert default_registry().problems(providers) == [
        "providers.claude.responses_api: kind anthropic does not speak OpenAI's Responses API "
        "(kinds that do: lmstudio, openai, openai-compatible, vllm)"
    ]


async def test_only_openais_own_host_speaks_responses_by_default() -> None:
    async with aiohttp.ClientSession() as session:
        protocols = [
            OpenAIAdapter("p", Provider(kind="openai", base_url=url), session).native_protocols
            for url in ("https://api.openai.com/v1", "http://127.0.0.1:9/v1")
        ]
    assert protocols == [frozenset({WireProtocol.RESPONSES}), frozenset()]


async def test_a_socket_turn_not_stored_upstream_is_replayed_not_continued_by_id(
    oai: FakeResponses, chat: FakeOpenAI
) -> None:
    async with gateway(oai, chat) as gw, aiohttp.ClientSession() as http:
        url = gw.url.replace("http://", "ws://") + "/v1/responses"
        async with http.ws_connect(url) as socket:
            first = await socket_turn(socket, model="gpt", input="my name is Ada", store=False)
            first_id = first[-1]["response"]["id"]
            second = await socket_turn(
                socket,
                model="gpt",
                input="what is my name?",
                store=False,
                previous_response_id=first_id,
            )
    # Relayed as OpenAI wrote it; OpenAI kept nothing (store: false), so the continuation is
    # replayed as chat history, not sent on by an id the upstream does not hold.
    assert first[-1]["type"] == "response.completed" and first_id not in oai.stored
    posted = oai.post_requests()
    assert [r.path for r in posted] == ["/v1/responses", "/v1/chat/completions"]
    assert posted[1].body["messages"][:2] == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "echo: my name is Ada (turn 1)"},
    ]
    assert second[-1]["response"]["output"][0]["content"][0]["text"] == (
        "echo: what is my name? (chat)"
    )


async def socket_turn(socket: aiohttp.ClientWebSocketResponse, **request: Any) -> list[Any]:
    """One Codex-style ``response.create`` over a WebSocket: the frames up to its end."""
    await socket.send_str(json.dumps({"type": "response.create", **request}))
    frames: list[Any] = []
    while True:
        frame = json.loads(await socket.receive_str(timeout=20))
        frames.append(frame)
        if frame["type"] in ("response.completed", "response.failed", "error"):
            return frames


def test_native_events_pass_unchanged_and_yield_usage_and_the_final_response() -> None:
    events = NativeEvents()
    created = b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n'
    response = (
        b'{"id":"resp_1","status":"completed","output":[],"usage":{"input_tokens":4,'
        b'"input_tokens_details":{"cached_tokens":1},"output_tokens":6,'
        b'"output_tokens_details":{"reasoning_tokens":5},"total_tokens":10}}'
    )
    completed = (
        b'event: response.completed\ndata: {"type":"response.completed","sequence_number":1,'
        b'"response":' + response + b"}\n\n"
    )
    assert events.feed(created) == created and events.usage is None
    assert events.feed(completed) == completed
    assert events.finish() == []
    assert events.final == response
    usage = events.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 6, 10)
    assert (usage.cached_tokens, usage.reasoning_tokens) == (1, 5)
    failed = events.fail(UpstreamProtocolError("stream cut"))
    assert failed.startswith(b"event: error\ndata: ")
    error = json.loads(failed.split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["sequence_number"] == 2
    assert "stream cut" in error["message"]


def test_a_body_carrying_turnouts_own_sealed_items_is_translated_not_sent_natively() -> None:
    assert native_request(b"{}", False, ["turnout.r1.abc"], None) is None
    assert native_request(b"{}", True, [None], None) is None  # a replay
    native = native_request(b"{}", True, ["gAAAA-openai"], "oai")
    assert native is not None and native.only == "oai"


def test_turnout_check_refuses_responses_api_on_an_anthropic_provider() -> None:
    config = config_of(
        {
            "providers": {
                "claude": {"kind": "anthropic", "base_url": "https://x", "responses_api": True}
            },
            "models": [{"name": "c", "targets": [{"provider": "claude", "model": "c-1"}]}],
        }
    )
    errors = preflight(config).errors
    assert any(e.startswith("providers.claude.responses_api: kind anthropic") for e in errors)
