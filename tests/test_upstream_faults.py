"""Upstreams that hang, drip, flood or compress: a real turnout over real misbehaving servers.

Each fault target is followed by a healthy one. While nothing was sent to the client, a fault
must end in fallback; after that, in a clean error event in the client's own protocol. Every
scenario runs under a hard deadline so a regression shows up as a failure, not a hung suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.fault_upstream import FaultUpstream
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": "ping"}]
KINDS = ["openai", "anthropic", "ollama"]
# Small deadlines: a fault is seen in under a second; the healthy target answers in milliseconds.
FAST = {"connect": 1, "first_byte": 0.5, "idle": 0.3, "max_stream": 0}
# A scenario must finish well inside this, on a loaded 2-core machine too.
LIMIT = 12


@pytest.fixture
async def fault() -> AsyncIterator[FaultUpstream]:
    async with FaultUpstream() as upstream:
        yield upstream


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=4) as upstream:
        yield upstream


def _base_url(fault: FaultUpstream, kind: str) -> str:
    return fault.url + "/v1" if kind == "openai" else fault.url


def gateway(
    fault: FaultUpstream,
    kind: str,
    scenario: str,
    backup: FakeOpenAI | None,
    **timeouts: Any,
) -> AbstractAsyncContextManager[RunningGateway]:
    providers: dict[str, Any] = {
        "bad": {
            "kind": kind,
            "base_url": _base_url(fault, kind),
            "local": True,
            "timeouts": {**FAST, **timeouts},
        }
    }
    targets = [{"provider": "bad", "model": scenario, "priority": 0}]
    if backup is not None:
        providers["good"] = {"kind": "openai", "base_url": backup.url, "local": True}
        targets.append({"provider": "good", "model": "ok", "priority": 1})
    raw = {
        "providers": providers,
        "models": [{"name": "m", "targets": targets}],
        "routing": {"retries": 0, "cooldown_seconds": 30},
    }
    return running_gateway(config_of(raw))


async def stream_text(gw: RunningGateway) -> str:
    stream = await gw.openai().chat.completions.create(model="m", messages=USER, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def assert_falls_back(gw: RunningGateway, fault: FaultUpstream, scenario: str) -> None:
    async with asyncio.timeout(LIMIT):
        assert await stream_text(gw) == "echo: ping"
    assert fault.requests[scenario] == 1


async def in_band_error(gw: RunningGateway) -> tuple[str, str]:
    """The text streamed before the error event, and the error's message."""
    received: list[str] = []
    stream = await gw.openai().chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIError) as caught:
        async with asyncio.timeout(LIMIT):
            async for chunk in stream:
                received.extend(c.delta.content or "" for c in chunk.choices)
    return "".join(received), caught.value.message


# --- before the first content: fallback ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_keepalives_alone_never_count_as_an_answer_and_the_next_target_serves(
    fault: FaultUpstream, backup: FakeOpenAI, kind: str
) -> None:
    """`: ping` comments (Anthropic: ping events, Ollama: blank lines) every 50 ms, for ever."""
    async with gateway(fault, kind, "comments", backup) as gw:
        await assert_falls_back(gw, fault, "comments")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_first_event_dripping_a_byte_at_a_time_falls_back_at_first_byte(
    fault: FaultUpstream, backup: FakeOpenAI, kind: str
) -> None:
    """Every byte resets a per-read timeout; the first-content deadline counts from the start."""
    async with gateway(fault, kind, "drip", backup) as gw:
        await assert_falls_back(gw, fault, "drip")


@pytest.mark.parametrize("kind", KINDS)
async def test_an_unterminated_huge_first_event_falls_back_at_once(
    fault: FaultUpstream, backup: FakeOpenAI, kind: str
) -> None:
    # first_byte is far beyond LIMIT: only the size bound can end this in time.
    async with gateway(
        fault, kind, "huge", backup, first_byte=60, idle=60, max_event_bytes=65536
    ) as gw:
        await assert_falls_back(gw, fault, "huge")


async def test_an_unknown_content_encoding_falls_back(
    fault: FaultUpstream, backup: FakeOpenAI
) -> None:
    async with gateway(fault, "openai", "unknown-encoding", backup) as gw:
        await assert_falls_back(gw, fault, "unknown-encoding")


async def test_crlf_line_ends_split_between_reads_still_frame_events(
    fault: FaultUpstream,
) -> None:
    async with gateway(fault, "openai", "crlf", None) as gw, asyncio.timeout(LIMIT):
        assert await stream_text(gw) == "x"


# --- after the first content: a clean error event -----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_that_trickles_for_ever_ends_at_max_stream_with_an_error_event(
    fault: FaultUpstream, backup: FakeOpenAI, kind: str
) -> None:
    async with gateway(fault, kind, "trickle", backup, first_byte=5, idle=5, max_stream=1) as gw:
        text, message = await in_band_error(gw)
    assert text.startswith("xx")  # it was streaming; then the deadline ended it
    assert "timeouts.max_stream (1 s)" in message
    assert fault.requests["trickle"] == 1 and not [r for r in backup.requests if r.method == "POST"]


@pytest.mark.parametrize("kind", KINDS)
async def test_keepalives_after_content_do_not_reset_idle(
    fault: FaultUpstream, backup: FakeOpenAI, kind: str
) -> None:
    async with gateway(fault, kind, "content-then-comments", backup) as gw:
        text, message = await in_band_error(gw)
    assert text == "x"
    assert "timeouts.idle (0.3 s)" in message


@pytest.mark.parametrize("kind", KINDS)
async def test_a_huge_event_after_content_ends_with_an_error_event(
    fault: FaultUpstream, backup: FakeOpenAI, kind: str
) -> None:
    async with gateway(
        fault, kind, "content-then-huge", backup, first_byte=60, idle=60, max_event_bytes=65536
    ) as gw:
        text, message = await in_band_error(gw)
    assert text == "x"
    assert "exceeds 65536 bytes" in message


async def test_max_stream_ends_a_messages_stream_with_an_anthropic_error_event(
    fault: FaultUpstream,
) -> None:
    async with gateway(fault, "openai", "trickle", None, first_byte=5, idle=5, max_stream=1) as gw:
        client = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with asyncio.timeout(LIMIT):
                stream = await client.messages.create(
                    model="m", max_tokens=50, messages=CLAUDE_USER, stream=True
                )
                async for _ in stream:
                    pass
        await client.close()
    assert "timeouts.max_stream" in str(caught.value)


async def test_max_stream_ends_a_responses_stream_with_response_failed(
    fault: FaultUpstream,
) -> None:
    async with gateway(fault, "openai", "trickle", None, first_byte=5, idle=5, max_stream=1) as gw:
        kinds: list[str] = []
        async with asyncio.timeout(LIMIT):
            stream = await gw.openai().responses.create(model="m", input="ping", stream=True)
            async for event in stream:
                kinds.append(event.type)
                if event.type == "response.failed":
                    failure = event.response.error
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    assert kinds[-1] == "response.failed"
    assert failure is not None and "timeouts.max_stream" in failure.message


# --- compression --------------------------------------------------------------------------------


def _compressing_gateway(upstream: FakeOpenAI) -> AbstractAsyncContextManager[RunningGateway]:
    raw = {
        "providers": {"up": {"kind": "openai", "base_url": upstream.url, "local": True}},
        "models": [{"name": "m", "targets": [{"provider": "up", "model": "ok"}]}],
        "routing": {"retries": 0},
    }
    return running_gateway(config_of(raw))


@pytest.mark.parametrize("compress", ["honour", "gzip"])
async def test_upstreams_are_asked_for_identity_and_compressed_answers_arrive_decoded(
    compress: str,
) -> None:
    """With "honour" the upstream gzips only if asked (it is not); with "gzip", regardless."""
    async with FakeOpenAI(stream_chunks=4) as upstream, _compressing_gateway(upstream) as gw:
        upstream.compress = compress
        client = gw.openai()
        reply = await client.chat.completions.create(model="m", messages=USER)
        assert reply.choices[0].message.content == "echo: ping"
        assert await stream_text(gw) == "echo: ping"
        claude = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
        message = await claude.messages.create(model="m", max_tokens=50, messages=CLAUDE_USER)
        assert message.content[0].type == "text" and message.content[0].text == "echo: ping"
        async with claude.messages.stream(model="m", max_tokens=50, messages=CLAUDE_USER) as events:
            assert await events.get_final_text() == "echo: ping"
        await claude.close()
        response = await client.responses.create(model="m", input="ping")
        assert response.output_text == "echo: ping"
        stream = await client.responses.create(model="m", input="ping", stream=True)
        done = [e async for e in stream if e.type == "response.output_text.done"]
        assert [e.text for e in done] == ["echo: ping"]
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert len(posts) == 6
    assert {r.headers.get("accept-encoding") for r in upstream.requests} == {"identity"}


async def test_engine_probes_ask_for_identity_too() -> None:
    async with FakeOpenAI() as upstream, _compressing_gateway(upstream) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/v1/models") as response:
                assert response.status == 200
    probes = [r for r in upstream.requests if r.method == "GET"]
    assert probes and all(r.headers.get("accept-encoding") == "identity" for r in probes)
