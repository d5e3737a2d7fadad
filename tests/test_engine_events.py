"""Progress while loading, on real llama-server roles (issue 14, item 4).

A stream that waits for a swap hears its stages as SSE comments before its first token, and
the official SDKs still read it; ``GET /engine/events`` streams every state and stage change;
``turnout switch`` prints the stages. The stage logic itself is unit-tested without processes
in ``test_engine_progress.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from anthropic import AsyncAnthropic

from gateway.client.api import GatewayClient
from gateway.client.switch import StatePrinter, follow
from tests.engines.engines import HELLO_TEXT
from tests.gateway_server import RunningGateway, config_of, running_gateway
from tests.test_engines import USER, engines_config, get, post, role

pytestmark = pytest.mark.engine

ADMIN_KEY = "sk-admin-events-test"


@pytest.fixture
async def coder_loaded(
    tiny_models: dict[str, Path], tmp_path: Path
) -> AsyncIterator[RunningGateway]:
    """fast and coder share one slot; coder is loaded, so a request for fast swaps."""
    roles = {"fast": role(tiny_models["tiny-hello"]), "coder": role(tiny_models["tiny-toolcall"])}
    async with engines_config(roles, log_dir=str(tmp_path)) as gw:
        status, _ = await post(gw, "/engine/switch/coder?wait=true")
        assert status == 200
        yield gw


def comments_before_first_token(raw: bytes) -> list[str]:
    """The ``: turnout:`` comments a stream sent before its first data event."""
    seen = []
    for block in raw.split(b"\n\n"):
        if block.startswith((b"data:", b"event:")):
            break
        if block.startswith(b": turnout: "):
            seen.append(block[len(b": turnout: ") :].decode())
    return seen


async def test_a_streamed_request_that_swaps_hears_the_stages_before_its_first_token(
    coder_loaded: RunningGateway,
) -> None:
    gw = coder_loaded
    body = {"model": "fast", "messages": USER, "max_tokens": 32, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.v1 + "/chat/completions", json=body) as response,
    ):
        raw = await response.read()
    stages = comments_before_first_token(raw)
    # keepalive_seconds is 0.2 in these configs and a tiny load takes about a second: the
    # stages of the first interval are replayed, the later ones arrive as they happen, and
    # the current one stands in for each keep-alive. (fast may start while coder still exits:
    # "stopping role coder" comes first only when fast has to wait for it.)
    assert stages[0] in ("stopping role coder", "starting role fast"), raw[:400]
    assert "starting role fast" in stages, raw[:400]
    assert set(stages) <= {
        "stopping role coder",
        "starting role fast",
        "loading role fast",
        "role fast ready",
    }, stages
    assert b": keepalive" not in raw.split(b"data:")[0]

    # Swapped back: the official SDK reads such a stream as if the comments were not there.
    await post(gw, "/engine/switch/coder?wait=true")
    stream = await gw.openai().chat.completions.create(
        model="fast", messages=USER, max_tokens=32, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == HELLO_TEXT


async def test_an_anthropic_stream_that_swaps_stays_valid_for_the_anthropic_sdk(
    coder_loaded: RunningGateway,
) -> None:
    gw = coder_loaded
    client = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
    try:
        async with client.messages.stream(
            model="fast", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = await stream.get_final_text()
    finally:
        await client.close()
    assert text == HELLO_TEXT


async def read_events(response: aiohttp.ClientResponse, into: list[dict[str, Any]]) -> None:
    async for line in response.content:
        if line.startswith(b"data:"):
            into.append(json.loads(line[5:]))


async def wait_for(found: list[dict[str, Any]], role: str, stage: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not any(e["role"] == role and e["stage"] == stage for e in found):
        assert time.monotonic() < deadline, f"no {stage} event for {role}: {found}"
        await asyncio.sleep(0.05)


async def test_engine_events_show_a_switch_from_stopping_through_starting_to_ready(
    coder_loaded: RunningGateway,
) -> None:
    gw = coder_loaded
    found: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + "/engine/events") as response,
    ):
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reading = asyncio.create_task(read_events(response, found))
        try:
            # First the current state of every role.
            await wait_for(found, "coder", "ready")
            status, _ = await post(gw, "/engine/switch/fast?wait=true")
            assert status == 200
            await wait_for(found, "fast", "ready")
            await wait_for(found, "coder", "stopped")
        finally:
            reading.cancel()
    fast = [(e["state"], e["stage"]) for e in found if e["role"] == "fast"]
    coder = [(e["state"], e["stage"]) for e in found if e["role"] == "coder"]
    assert fast[0] == ("stopped", "stopped"), fast
    assert fast.index(("starting", "starting")) < fast.index(("ready", "ready")), fast
    assert fast[-1] == ("ready", "ready"), fast
    assert coder[0] == ("ready", "ready") and coder[-1] == ("stopped", "stopped"), coder
    assert ("stopping", "stopping") in coder, coder
    assert all(isinstance(e["at"], float) and e["text"] for e in found)
    # The client left: its subscription is gone (the stream was cancelled end to end).
    supervisor = gw.app.state.gateway.supervisor
    for _ in range(100):
        if supervisor.events.readers == 0:
            break
        await asyncio.sleep(0.05)
    assert supervisor.events.readers == 0


async def test_engine_events_end_when_the_gateway_stops(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    roles = {"fast": role(tiny_models["tiny-hello"])}
    async with aiohttp.ClientSession() as session:
        async with engines_config(roles, log_dir=str(tmp_path)) as gw:
            response = await session.get(gw.url + "/engine/events")
            first = json.loads((await response.content.readline())[5:])
            assert (first["role"], first["state"]) == ("fast", "stopped")
            reading = asyncio.create_task(response.content.read())
            stopping = time.monotonic()
        # The gateway did not wait out a grace period for the open stream: it ended it.
        rest = await asyncio.wait_for(reading, 5)
        assert time.monotonic() - stopping < 8
        response.release()
    # Whatever was still on its way is whole events: the stream ended, it was not cut.
    assert all(line.startswith((b"data:", b":")) for line in rest.splitlines() if line.strip()), (
        rest
    )


async def test_engine_events_need_the_admin_key(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    raw = {
        "roles": {"fast": role(tiny_models["tiny-hello"])},
        "engines": {"log_dir": str(tmp_path)},
        "auth": {"admin_key": ADMIN_KEY},
    }
    async with running_gateway(config_of(raw)) as gw, aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/engine/events") as refused:
            assert refused.status == 401
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with session.get(gw.url + "/engine/events", headers=headers) as allowed:
            assert allowed.status == 200
            line = await allowed.content.readline()
            assert json.loads(line[5:])["role"] == "fast"


async def test_turnout_switch_prints_the_stages_it_waits_through(
    coder_loaded: RunningGateway,
) -> None:
    gw = coder_loaded
    said: list[str] = []
    out = io.StringIO()
    printer = StatePrinter(out)

    def report(elapsed: float, stage: str) -> None:
        said.append(stage)
        printer(elapsed, stage)

    client = GatewayClient(gw.url, timeout=30)
    outcome = await asyncio.to_thread(follow, client, "fast", 30.0, report)
    assert outcome["ok"] is True and outcome["from"] == "coder"
    assert "starting role fast" in said, said
    lines = [line.split(None, 1)[1] for line in out.getvalue().splitlines()]
    # One line per stage, in order, each with the seconds so far.
    assert lines == list(dict.fromkeys(lines)), lines
    assert lines[0] in ("stopping role coder", "starting role fast"), lines
    assert lines.index("starting role fast") < lines.index("role fast ready"), lines
    _, engine = await get(gw, "/engine/status")
    assert engine["role"] == "fast"
