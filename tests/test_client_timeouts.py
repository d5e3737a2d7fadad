"""Slow and surplus clients against a real turnout on the production HTTP protocol.

Slowloris clients (a connection that says nothing, headers a byte at a time, a body shorter than
its Content-Length) are answered 408 or closed after the configured deadlines, connections past
``server.max_connections`` get a 503 in OpenAI's envelope, and ordinary clients, keep-alive ones
included, notice nothing. Deadlines are small here; the asserts allow generous slack.

The protocol adds nothing per request (gateway/connections.py says how that was measured).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
import websockets

from gateway.app import create_app
from gateway.connections import guarded_protocol
from gateway.errors import ConfigError
from tests.gateway_server import config_of, free_port

HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
)


@asynccontextmanager
async def gateway(**server: Any) -> AsyncIterator[int]:
    """A keyless turnout served as ``turnout serve`` serves it; yields its port."""
    config = config_of({"server": server})
    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host="127.0.0.1",
            port=port,
            loop="none",
            http=guarded_protocol(config.server),
            lifespan="on",
            log_level="warning",
            access_log=False,
        )
    )
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        assert not task.done(), "turnout did not start"
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        uv.should_exit = True
        await asyncio.wait_for(task, 15)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def until_closed(reader: asyncio.StreamReader, seconds: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        data = await reader.read()
    return data, time.monotonic() - started


def status_and_json(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_a_client_dripping_its_headers_gets_408_and_is_closed() -> None:
    async with gateway(header_timeout_seconds=0.5) as port:
        reader, writer = await connect(port)
        writer.write(HEAD)  # ... and never the blank line that ends the head
        raw, seconds = await until_closed(reader)
        writer.close()
    status, body = status_and_json(raw)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert "server.header_timeout_seconds" in body["error"]["message"]
    assert 0.4 <= seconds < 5


async def test_headers_sent_a_byte_at_a_time_cannot_extend_the_deadline() -> None:
    async with gateway(header_timeout_seconds=0.6) as port:
        reader, writer = await connect(port)

        async def drip() -> None:
            for byte in HEAD:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        dripping = asyncio.create_task(drip())
        raw, seconds = await until_closed(reader)
        dripping.cancel()
        writer.close()
    assert raw.startswith(b"HTTP/1.1 408 ") and seconds < 5


async def test_a_connection_that_says_nothing_is_closed_without_an_answer() -> None:
    async with gateway(header_timeout_seconds=0.5) as port:
        reader, writer = await connect(port)
        raw, seconds = await until_closed(reader)
        writer.close()
    assert raw == b"" and 0.4 <= seconds < 5


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/engine/switch/fast"])
async def test_a_body_shorter_than_its_content_length_gets_408(path: str) -> None:
    """Raw-ASGI endpoints and Litestar controllers alike: the deadline is the protocol's."""
    async with gateway(body_timeout_seconds=0.5) as port:
        reader, writer = await connect(port)
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
        writer.write(head.encode() + b'{"model": "x"')
        raw, seconds = await until_closed(reader)
        writer.close()
    status, body = status_and_json(raw)
    assert status == 408 and "server.body_timeout_seconds" in body["error"]["message"]
    assert 0.4 <= seconds < 5


async def test_a_slow_body_that_keeps_moving_is_read_whole() -> None:
    body = json.dumps({"model": "nothing-here", "messages": []}).encode()
    async with gateway(body_timeout_seconds=1.0) as port:
        reader, writer = await connect(port)
        writer.write(HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        for i in range(0, len(body), 8):  # ~1.5 s in all, never 1 s without a byte
            writer.write(body[i : i + 8])
            await asyncio.sleep(0.2)
        raw, _ = await until_closed(reader)
        writer.close()
    status, answer = status_and_json(raw)
    assert status == 404 and answer["error"]["code"] == "model_not_found"


async def test_an_idle_keep_alive_connection_outlives_the_header_deadline() -> None:
    """After an answer, idleness is keep-alive's business (5 s), not the header deadline's."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with gateway(header_timeout_seconds=0.3) as port:
        reader, writer = await connect(port)
        answers = []
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answers.append((head.split()[1], await reader.readexactly(length)))
            await asyncio.sleep(1.0)
        writer.close()
    assert answers == [(b"200", b'{"status":"ok"}')] * 2


async def test_connections_past_the_limit_get_503_in_the_envelope() -> None:
    async with gateway(max_connections=3) as port:
        held = [await connect(port) for _ in range(3)]
        await asyncio.sleep(0.1)
        reader, writer = await connect(port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raw, _ = await until_closed(reader)
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(0.3)
        reader, writer = await connect(port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        after, _ = await until_closed(reader)
        writer.close()
    status, body = status_and_json(raw)
    assert status == 503 and body["error"]["code"] == "server_busy"
    assert "server.max_connections" in body["error"]["message"]
    assert b"\r\nretry-after: 1\r\n" in raw.lower()
    assert after.startswith(b"HTTP/1.1 200 ")


async def test_a_websocket_upgrade_past_the_limit_gets_503() -> None:
    async with gateway(max_connections=2) as port:
        held = [await connect(port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await connect(port)
        writer.write(
            b"GET /v1/chat/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        raw, _ = await until_closed(reader)
        writer.close()
        for _, w in held:
            w.close()
    assert raw.startswith(b"HTTP/1.1 503 ")


async def test_a_websocket_outlives_the_deadlines() -> None:
    """After the upgrade the socket is the WebSocket protocol's: no header or body deadline."""
    async with gateway(header_timeout_seconds=0.3, body_timeout_seconds=0.3) as port:
        url = f"ws://127.0.0.1:{port}/v1/chat/ws"
        async with websockets.connect(url, proxy=None) as ws:
            await asyncio.sleep(1.2)
            await ws.send(json.dumps({"type": "hello"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply["type"] == "error" and reply["status"] == 400


def test_deadlines_and_the_limit_are_validated() -> None:
    with pytest.raises(ConfigError) as error:
        config_of(
            {
                "server": {
                    "header_timeout_seconds": 0,
                    "body_timeout_seconds": -1,
                    "max_connections": 0,
                }
            }
        )
    message = str(error.value)
    for key in ("header_timeout_seconds", "body_timeout_seconds", "max_connections"):
        assert f"server.{key}" in message
