"""``/v1/chat/ws`` with a real client library (``websockets``) against a real turnout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

USER = [{"role": "user", "content": "ping"}]
ENDS = ("done", "error", "cancelled")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=5) as upstream:
        yield upstream


def gateway(
    upstream_url: str, model: str = "ok", **sections: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    raw = {
        "providers": {"up": {"kind": "openai", "base_url": upstream_url, "local": True}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": model}]}],
        "routing": {"retries": 0},
        "usage": {"flush_interval_seconds": 0.05},
        **sections,
    }
    return running_gateway(config_of(raw))


def socket(gw: RunningGateway, **options: Any) -> connect:
    return connect(gw.url.replace("http://", "ws://") + "/v1/chat/ws", proxy=None, **options)


async def chat(ws: ClientConnection, chat_id: str, content: str = "ping", **request: Any) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": content}], **request}
    await ws.send(json.dumps({"type": "chat", "id": chat_id, "request": body}))


async def until_ended(ws: ClientConnection, *ids: str, seconds: float = 10) -> list[dict[str, Any]]:
    """Every message until each of ``ids`` got its last one (done, error or cancelled)."""
    received: list[dict[str, Any]] = []
    open_ids = set(ids)
    async with asyncio.timeout(seconds):
        while open_ids:
            message = json.loads(await ws.recv())
            received.append(message)
            if message["type"] in ENDS:
                open_ids.discard(message["id"])
    return received


def text_of(messages: list[dict[str, Any]], chat_id: str) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for m in messages
        if m["type"] == "chunk" and m["id"] == chat_id
        for choice in m["data"]["choices"]
    )


async def get_json(gw: RunningGateway, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(gw.url + path) as response:
        return await response.json()


async def metrics_text(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        return await response.text()


# --- streaming ---------------------------------------------------------------------------------


async def test_chunks_carry_the_same_json_as_the_sse_events_of_the_same_request(
    fake: FakeOpenAI,
) -> None:
    async with gateway(fake.url) as gw:
        body = {"model": "chat", "messages": USER, "stream": True}
        async with (
            aiohttp.ClientSession() as session,
            session.post(gw.v1 + "/chat/completions", json=body) as response,
        ):
            raw = await response.read()
        sse = [json.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
        async with socket(gw) as ws:
            await chat(ws, "a", stream=True)
            messages = await until_ended(ws, "a")

    chunks = [m["data"] for m in messages if m["type"] == "chunk"]
    # Upstream ids and timestamps differ per request; everything else must be identical.
    for chunk in (*sse, *chunks):
        chunk.pop("id"), chunk.pop("created")
    assert chunks == sse and len(chunks) > 3
    assert text_of(messages, "a") == "echo: ping"
    assert messages[-1]["type"] == "done" and len(messages[-1]["request_id"]) == 24


async def test_stream_is_the_default_and_the_usage_chunk_comes_when_asked_for(
    fake: FakeOpenAI,
) -> None:
    async with gateway(fake.url) as gw, socket(gw) as ws:
        await chat(ws, "plain")
        plain = await until_ended(ws, "plain")
        await chat(ws, "usage", stream_options={"include_usage": True})
        with_usage = await until_ended(ws, "usage")
    assert [m["type"] for m in plain][-1] == "done" and text_of(plain, "plain") == "echo: ping"
    assert all(m["data"].get("usage") is None for m in plain if m["type"] == "chunk")
    last_chunk = [m for m in with_usage if m["type"] == "chunk"][-1]["data"]
    assert last_chunk["choices"] == [] and last_chunk["usage"]["total_tokens"] > 0


async def test_non_streaming_request_gets_one_response_then_done(fake: FakeOpenAI) -> None:
    async with gateway(fake.url) as gw, socket(gw) as ws:
        await chat(ws, "whole", stream=False)
        messages = await until_ended(ws, "whole")
    assert [m["type"] for m in messages] == ["response", "done"]
    completion = messages[0]["data"]
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "echo: ping"


async def test_several_chats_on_one_socket_stream_concurrently(fake: FakeOpenAI) -> None:
    fake.chunk_delay = 0.03
    async with gateway(fake.url) as gw, socket(gw) as ws:
        for i in range(3):
            await chat(ws, f"c{i}", content=f"number {i}")
        messages = await until_ended(ws, "c0", "c1", "c2")
        # A finished chat's id is free again.
        await chat(ws, "c0", content="again")
        again = await until_ended(ws, "c0")
    for i in range(3):
        assert text_of(messages, f"c{i}") == f"echo: number {i}"
    order = [m["id"] for m in messages if m["type"] == "chunk"]
    first_ends = {chat_id: max(i for i, x in enumerate(order) if x == chat_id) for chat_id in order}
    starts = {chat_id: order.index(chat_id) for chat_id in order}
    assert all(starts[c] < min(first_ends.values()) for c in starts), "chats ran one after another"
    request_ids = {m["request_id"] for m in messages if m["type"] == "done"}
    assert len(request_ids) == 3
    assert text_of(again, "c0") == "echo: again"


# --- cancellation --------------------------------------------------------------------------------


class SlowUpstream:
    """An OpenAI-style upstream that streams a chunk every 50 ms and notices being cut off."""

    def __init__(self) -> None:
        self.streaming = asyncio.Event()
        self.cut = asyncio.Event()
        self.finished = False
        self._runner: web.ServerRunner | None = None
        self.url = ""

    async def __aenter__(self) -> SlowUpstream:
        server = web.Server(self._handle, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"object": "list", "data": [{"id": "slow"}]})
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(200):
                chunk = {
                    "id": "chatcmpl-slow",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "slow",
                    "choices": [{"index": 0, "delta": {"content": f"{i} "}, "finish_reason": None}],
                }
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.streaming.set()
                await asyncio.sleep(0.05)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cut.set()
            raise
        self.finished = True
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def slow() -> AsyncIterator[SlowUpstream]:
    async with SlowUpstream() as upstream:
        yield upstream


async def wait_idle(gw: RunningGateway) -> str:
    text = ""
    for _ in range(100):
        text = await metrics_text(gw)
        if "turnout_requests_in_flight 0.0" in text:
            return text
        await asyncio.sleep(0.05)
    return text


async def test_cancel_ends_that_chat_and_its_upstream_request(slow: SlowUpstream) -> None:
    async with gateway(slow.url, model="slow") as gw, socket(gw) as ws:
        await chat(ws, "long")
        await chat(ws, "other", stream=False)
        seen = 0
        while seen < 3:
            message = json.loads(await ws.recv())
            seen += message["type"] == "chunk" and message["id"] == "long"
        await ws.send(json.dumps({"type": "cancel", "id": "long"}))
        after = await until_ended(ws, "long")
        assert after[-1] == {"type": "cancelled", "id": "long"}
        await asyncio.wait_for(slow.cut.wait(), 5)
        # The socket still serves its other chat, and a cancel for an ended chat is ignored.
        await ws.send(json.dumps({"type": "cancel", "id": "long"}))
        await ws.send(json.dumps({"type": "cancel", "id": "other"}))
        rest = await until_ended(ws, "other", seconds=15)
        text = await wait_idle(gw)
        recent = await get_json(gw, "/v1/requests/recent")
    assert rest[-1]["type"] == "cancelled" and not slow.finished
    assert 'turnout_client_disconnects_total{route="chat"} 2.0' in text
    assert "turnout_requests_in_flight 0.0" in text
    assert [row["status"] for row in recent["data"]] == [499, 499]
    assert "client disconnected" in recent["data"][0]["notes"]


async def test_closing_the_socket_cancels_its_open_chats(slow: SlowUpstream) -> None:
    async with gateway(slow.url, model="slow") as gw:
        async with socket(gw) as ws:
            await chat(ws, "left")
            await asyncio.wait_for(slow.streaming.wait(), 5)
        await asyncio.wait_for(slow.cut.wait(), 5)
        text = await wait_idle(gw)
    assert "turnout_requests_in_flight 0.0" in text and not slow.finished


# --- errors, limits, keys ----------------------------------------------------------------------


async def test_errors_arrive_as_error_messages_in_openai_shape(fake: FakeOpenAI) -> None:
    async with gateway(fake.url) as gw, socket(gw) as ws:
        await ws.send("{not json")
        unreadable = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "chat", "request": {"model": "chat"}}))
        no_id = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "shout", "id": "x"}))
        unknown = json.loads(await ws.recv())
        await chat(ws, "missing", model="no-such-model")
        missing = await until_ended(ws, "missing")
        await ws.send(json.dumps({"type": "chat", "id": "bad", "request": [1, 2]}))
        bad = await until_ended(ws, "bad")
    assert unreadable["type"] == "error" and unreadable["id"] is None
    assert unreadable["status"] == 400 and unreadable["error"]["type"] == "invalid_request_error"
    assert no_id["error"]["param"] == "id"
    assert unknown["id"] == "x" and "chat, cancel or auth" in unknown["error"]["message"]
    assert missing == [
        {
            "type": "error",
            "id": "missing",
            "request_id": missing[0]["request_id"],
            "status": 404,
            "error": missing[0]["error"],
        }
    ]
    assert missing[0]["error"]["code"] == "model_not_found"
    assert bad[0]["error"]["param"] == "request"


async def test_a_reused_open_id_is_refused_without_touching_the_first(fake: FakeOpenAI) -> None:
    fake.chunk_delay = 0.05
    async with gateway(fake.url) as gw, socket(gw) as ws:
        await chat(ws, "same")
        await chat(ws, "same")
        messages = await until_ended(ws, "same")
        rest = await until_ended(ws, "same")
    assert messages[-1]["type"] == "error" and "still open" in messages[-1]["error"]["message"]
    assert rest[-1]["type"] == "done" and text_of(messages + rest, "same") == "echo: ping"


async def test_an_upstream_failure_mid_stream_ends_the_chat_with_an_error(
    fake: FakeOpenAI,
) -> None:
    async with gateway(fake.url, model="drop-mid-stream") as gw, socket(gw) as ws:
        await chat(ws, "cut")
        messages = await until_ended(ws, "cut")
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "chunk" and kinds[-1] == "error"
    # After the first chunk the HTTP answer was a 200 with the error in-band: no status here.
    assert "status" not in messages[-1] and messages[-1]["error"]["message"]


async def test_rate_limits_and_usage_rows_apply_as_over_http(fake: FakeOpenAI) -> None:
    limits = {"models": {"chat": {"rpm": 1}}}
    async with (
        gateway(fake.url, limits=limits) as gw,
        socket(gw, additional_headers={"X-Agent-Id": "ws-agent"}) as ws,
    ):
        await chat(ws, "first")
        first = await until_ended(ws, "first")
        await chat(ws, "second")
        second = await until_ended(ws, "second")
        await asyncio.sleep(0.3)
        usage = await get_json(gw, "/v1/usage?group_by=agent")
    assert first[-1]["type"] == "done"
    assert second[-1]["status"] == 429 and second[-1]["error"]["code"] == "rate_limit_exceeded"
    assert usage["data"] == [{**usage["data"][0], "agent": "ws-agent", "requests": 2, "errors": 1}]


async def test_keys_come_on_the_upgrade_or_in_an_auth_message(fake: FakeOpenAI) -> None:
    async with gateway(fake.url, auth={"admin_key": "sk-admin-1"}) as gw:
        async with socket(gw) as ws:
            await chat(ws, "anonymous")
            refused = await until_ended(ws, "anonymous")
            await ws.send(json.dumps({"type": "auth", "key": "wrong"}))
            wrong = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "auth", "key": "sk-admin-1"}))
            accepted = json.loads(await ws.recv())
            await chat(ws, "keyed")
            keyed = await until_ended(ws, "keyed")
        headers = {"Authorization": "Bearer sk-admin-1"}
        async with socket(gw, additional_headers=headers) as ws:
            await chat(ws, "header")
            by_header = await until_ended(ws, "header")
    assert refused[-1]["status"] == 401 and refused[-1]["error"]["code"] == "invalid_api_key"
    assert wrong["type"] == "error" and wrong["id"] is None and wrong["status"] == 401
    assert accepted == {"type": "authenticated", "id": None}
    assert keyed[-1]["type"] == "done" and text_of(keyed, "keyed") == "echo: ping"
    assert by_header[-1]["type"] == "done"


async def test_a_keyless_gateway_refuses_cross_site_pages(fake: FakeOpenAI) -> None:
    async with gateway(fake.url) as gw:
        with pytest.raises(InvalidStatus) as refused:
            async with socket(gw, origin="https://evil.example"):
                pass
        same_site = gw.url.replace("localhost", "127.0.0.1")
        async with socket(gw, origin=same_site) as ws:
            await chat(ws, "mine")
            mine = await until_ended(ws, "mine")
    assert refused.value.response.status_code == 403
    assert mine[-1]["type"] == "done"


async def test_a_deeply_nested_message_is_refused_and_the_socket_stays_open(
    fake: FakeOpenAI,
) -> None:
    async with gateway(fake.url) as gw, socket(gw) as ws:
        await ws.send('{"type":"chat","id":"deep","request":' + "[" * 5000 + "]" * 5000 + "}")
        refused = json.loads(await ws.recv())
        await chat(ws, "after")
        after = await until_ended(ws, "after")
    assert refused["type"] == "error" and refused["status"] == 400
    assert "nests deeper than" in refused["error"]["message"]
    assert after[-1]["type"] == "done"
