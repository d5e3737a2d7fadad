"""The lean HTTP/1.1 client (adapters/h1.py) against raw loopback servers that answer byte for byte.

Each server is a real socket server scripted per test with the exact bytes an upstream sends,
so framing (Content-Length, chunked, read-to-close), keep-alive reuse and the upstream closing
kept-alive connections are exercised as an engine would produce them.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from adapters.h1 import H1Pool, pool_for
from adapters.http import lean_open_event_stream, lean_post_for_body
from gateway.config.upstreams import Provider, Timeouts
from gateway.errors import (
    StaleConnection,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
)
from tests.gateway_server import free_port

Answer = Callable[[bytes], bytes | None]  # the request's bytes -> what to send back (None: close)

OK_JSON = b'{"ok":true}'


def ok(body: bytes = OK_JSON, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


class Script:
    """A loopback server: each connection reads requests and writes ``answer(request)``."""

    def __init__(self, answer: Answer, close_after: int | None = None) -> None:
        self.answer = answer
        self.close_after = close_after  # answers per connection before the server closes it
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = free_port()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.answer(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Serve = Callable[[Script], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> None:
        servers.append(await asyncio.start_server(script._serve, "127.0.0.1", script.port))

    yield start
    for server in servers:
        server.close()


TIMEOUTS = Timeouts(connect=2, first_byte=5, idle=5)


def pool(script: Script) -> tuple[H1Pool, bytes]:
    p = H1Pool("127.0.0.1", script.port)
    return p, p.head("/v1/chat/completions", {"Content-Type": "application/json"})


async def test_sequential_requests_ride_one_kept_alive_connection(serve: Serve) -> None:
    script = Script(lambda _: ok())
    await serve(script)
    p, head = pool(script)
    for _ in range(5):
        assert await lean_post_for_body(p, head, b"{}", TIMEOUTS) == (200, OK_JSON)
    assert script.connections == 1
    first = script.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Accept-Encoding: identity\r\n" in first and first.endswith(b"\r\n\r\n{}")
    p.close()


async def test_chunked_and_read_to_close_bodies_arrive_whole(serve: Serve) -> None:
    chunked = (
        b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n'
    )
    script = Script(lambda _: chunked)
    await serve(script)
    p, head = pool(script)
    assert await lean_post_for_body(p, head, b"{}", TIMEOUTS) == (200, b'{"a":1}')
    # No Content-Length and not chunked: the body ends with the connection.
    until_close = Script(lambda _: b"HTTP/1.1 200 OK\r\n\r\n" + OK_JSON, close_after=1)
    await serve(until_close)
    q, head2 = pool(until_close)
    assert await lean_post_for_body(q, head2, b"{}", TIMEOUTS) == (200, OK_JSON)
    assert await lean_post_for_body(q, head2, b"{}", TIMEOUTS) == (200, OK_JSON)
    assert until_close.connections == 2  # never reused: its end was the close


async def test_an_interim_100_continue_is_skipped(serve: Serve) -> None:
    script = Script(lambda _: b"HTTP/1.1 100 Continue\r\n\r\n" + ok())
    await serve(script)
    p, head = pool(script)
    assert await lean_post_for_body(p, head, b"{}", TIMEOUTS) == (200, OK_JSON)


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve: Serve) -> None:
    # llama-server closes the connection after each streamed answer, keep-alive header or not.
    script = Script(lambda _: ok(), close_after=1)
    await serve(script)
    p, head = pool(script)
    assert await lean_post_for_body(p, head, b"{}", TIMEOUTS) == (200, OK_JSON)
    await asyncio.sleep(0.05)  # the close arrives while the connection sits idle
    assert await lean_post_for_body(p, head, b"{}", TIMEOUTS) == (200, OK_JSON)
    assert script.connections == 2


async def test_a_kept_alive_connection_closed_under_a_request_is_stale_not_failed(
    serve: Serve,
) -> None:
    answers = iter([ok(), None])  # the second request on the connection is dropped unanswered
    script = Script(lambda _: next(answers))
    await serve(script)
    p, head = pool(script)
    assert await lean_post_for_body(p, head, b"{}", TIMEOUTS) == (200, OK_JSON)
    # The forwarder resends a StaleConnection on a new connection, uncounted.
    with pytest.raises(StaleConnection):
        await lean_post_for_body(p, head, b"{}", TIMEOUTS)


async def test_a_fresh_connection_closed_unanswered_is_a_protocol_error(serve: Serve) -> None:
    script = Script(lambda _: None)
    await serve(script)
    p, head = pool(script)
    with pytest.raises(UpstreamProtocolError, match="closed the connection") as caught:
        await lean_post_for_body(p, head, b"{}", TIMEOUTS)
    assert not isinstance(caught.value, StaleConnection)


async def test_error_statuses_carry_their_body_and_retry_after(serve: Serve) -> None:
    body = b'{"error":{"message":"slow down"}}'
    script = Script(lambda _: ok(body, b"retry-after: 7\r\n").replace(b"200 OK", b"429 Too Many"))
    await serve(script)
    p, head = pool(script)
    with pytest.raises(UpstreamStatus) as caught:
        await lean_post_for_body(p, head, b"{}", TIMEOUTS)
    assert (caught.value.upstream_status, caught.value.body, caught.value.retry_after) == (
        429,
        body,
        7.0,
    )


async def test_gzip_is_decoded_and_unknown_codings_refused(serve: Serve) -> None:
    packed = gzip.compress(OK_JSON)
    script = Script(lambda _: ok(packed, b"content-encoding: gzip\r\n"))
    await serve(script)
    p, head = pool(script)
    assert await lean_post_for_body(p, head, b"{}", TIMEOUTS) == (200, OK_JSON)
    odd = Script(lambda _: ok(OK_JSON, b"content-encoding: compress\r\n"))
    await serve(odd)
    q, head2 = pool(odd)
    with pytest.raises(UpstreamProtocolError, match="Content-Encoding 'compress'"):
        await lean_post_for_body(q, head2, b"{}", TIMEOUTS)


async def test_an_answer_over_max_body_bytes_is_refused(serve: Serve) -> None:
    script = Script(lambda _: ok(b"x" * 5000))
    await serve(script)
    p, head = pool(script)
    small = Timeouts(connect=2, first_byte=5, max_body_bytes=1000)
    with pytest.raises(UpstreamProtocolError, match="exceeds 1000 bytes"):
        await lean_post_for_body(p, head, b"{}", small)


async def test_malformed_answers_and_refused_connects_are_named(serve: Serve) -> None:
    script = Script(lambda _: b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n")
    await serve(script)
    p, head = pool(script)
    with pytest.raises(UpstreamProtocolError, match="malformed answer"):
        await lean_post_for_body(p, head, b"{}", TIMEOUTS)
    nobody = H1Pool("127.0.0.1", free_port())
    with pytest.raises(UpstreamConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        await lean_post_for_body(nobody, nobody.head("/x", {}), b"{}", TIMEOUTS)


async def test_a_silent_upstream_times_out_and_its_connection_is_dropped(
    serve: Serve,
) -> None:
    script = Script(lambda _: b"")  # reads the request, never answers
    await serve(script)
    p, head = pool(script)
    quick = Timeouts(connect=0.2, first_byte=0.3)
    with pytest.raises(UpstreamTimeout):
        await lean_post_for_body(p, head, b"{}", quick)
    script.answer = lambda _: ok()
    assert await lean_post_for_body(p, head, b"{}", TIMEOUTS) == (200, OK_JSON)
    assert script.connections == 2  # the timed-out answer never returns its connection


async def test_a_stream_arrives_in_reads_and_a_large_one_is_paced(serve: Serve) -> None:
    event = b"data: " + b"x" * 1000 + b"\n\n"
    events = 600  # about 600 KB: past the high-water mark, so reading pauses and resumes
    payload = event * events
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for _ in range(events))
    script = Script(
        lambda _: (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
        )
    )
    await serve(script)
    p, head = pool(script)
    response = await lean_open_event_stream(p, head, b"{}", TIMEOUTS)
    got = []
    while chunk := await response.content.readany():
        got.append(chunk)
        await asyncio.sleep(0)  # a relay slower than the socket
    assert b"".join(got) == payload
    assert response.closed
    # Read to its end: the connection goes back to the pool and carries the next request.
    again = await lean_open_event_stream(p, head, b"{}", TIMEOUTS)
    again.close()
    assert script.connections == 1


async def test_a_stream_closed_early_takes_its_connection(serve: Serve) -> None:
    script = Script(
        lambda _: (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n"
        )
    )
    await serve(script)
    p, head = pool(script)
    response = await lean_open_event_stream(p, head, b"{}", TIMEOUTS)
    assert await response.content.readany() == b"data: "
    response.close()
    assert await lean_open_event_stream(p, head, b"{}", TIMEOUTS)
    assert script.connections == 2


async def test_a_non_stream_answer_to_a_stream_request_is_refused(serve: Serve) -> None:
    script = Script(lambda _: ok())
    await serve(script)
    p, head = pool(script)
    with pytest.raises(UpstreamProtocolError, match="got Content-Type application/json"):
        await lean_open_event_stream(p, head, b"{}", TIMEOUTS)


def test_only_plain_http_origins_with_clean_headers_get_the_lean_client() -> None:
    assert pool_for(Provider(kind="openai", base_url="http://10.0.0.2:8080/v1"))
    assert pool_for(Provider(kind="openai", base_url="https://api.openai.com/v1")) is None
    bad = Provider(kind="openai", base_url="http://h/v1", headers={"x": "a\r\nb: c"})
    assert pool_for(bad) is None
