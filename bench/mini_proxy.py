"""Minimal forwarding proxies for ``POST /v1/chat/completions``, to compare upstream clients.

    python -m bench.mini_proxy --variant litestar-httpx --upstream http://127.0.0.1:P --port Q

Variants (see bench/http_clients.py):
  litestar-httpx    Litestar handler, one shared ``httpx.AsyncClient``
  litestar-aiohttp  Litestar handler, one shared ``aiohttp.ClientSession``
  asgi-aiohttp      raw ASGI callable (no framework), one shared ``aiohttp.ClientSession``

Each does the least a gateway must: read the body, look at ``stream`` without decoding the rest,
forward the bytes, and relay the reply (JSON) or the SSE bytes unchanged (stream). Served by
uvicorn with uvloop and httptools and no access log, like turnout.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import aiohttp
import httpx
import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream

JSON = "application/json"
SSE = "text/event-stream"
UPSTREAM_HEADERS = {"Content-Type": JSON}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Routing(msgspec.Struct):
    """The only fields a proxy decodes; the rest of the body is forwarded as bytes."""

    model: str
    stream: bool = False


_routing = msgspec.json.Decoder(Routing)


class Upstream(Protocol):
    """What a handler needs from an upstream client: one reply, or a stream of bytes."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def send(self, body: bytes) -> tuple[int, bytes]: ...
    async def open(self, body: bytes) -> tuple[int, AsyncIterator[bytes]]: ...


class HttpxUpstream:
    def __init__(self, url: str) -> None:
        self._url = url
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # Keep-alive for every concurrent request, as with aiohttp: no pool churn at c=64.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self._client = httpx.AsyncClient(limits=limits, timeout=60)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def send(self, body: bytes) -> tuple[int, bytes]:
        assert self._client is not None
        response = await self._client.post(self._url, content=body, headers=UPSTREAM_HEADERS)
        return response.status_code, response.content

    async def open(self, body: bytes) -> tuple[int, AsyncIterator[bytes]]:
        assert self._client is not None
        request = self._client.build_request(
            "POST", self._url, content=body, headers=UPSTREAM_HEADERS
        )
        response = await self._client.send(request, stream=True)
        return response.status_code, _httpx_chunks(response)


async def _httpx_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()


class AiohttpUpstream:
    def __init__(self, url: str) -> None:
        self._url = url
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, body: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        async with self._session.post(self._url, data=body, headers=UPSTREAM_HEADERS) as r:
            return r.status, await r.read()

    async def open(self, body: bytes) -> tuple[int, AsyncIterator[bytes]]:
        assert self._session is not None
        response = await self._session.post(self._url, data=body, headers=UPSTREAM_HEADERS)
        return response.status, _aiohttp_chunks(response)


async def _aiohttp_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    finally:
        response.release()


def litestar_app(upstream: Upstream) -> Litestar:
    @post("/v1/chat/completions")
    async def chat(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        body = await request.body()
        if _routing.decode(body).stream:
            status, chunks = await upstream.open(body)
            return Stream(chunks, status_code=status, media_type=SSE)
        status, reply = await upstream.send(body)
        return Response(reply, status_code=status, media_type=JSON)

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(
        route_handlers=[chat, health],
        on_startup=[upstream.start],
        on_shutdown=[upstream.close],
        openapi_config=None,
        logging_config=None,
    )


def asgi_app(upstream: Upstream) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(upstream, receive, send)
            return
        if scope["path"] == "/health":
            await _start(send, 200, JSON, 2)
            await send({"type": "http.response.body", "body": b"{}"})
            return
        body = await _read_body(receive)
        if _routing.decode(body).stream:
            status, chunks = await upstream.open(body)
            await _start(send, status, SSE)
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        status, reply = await upstream.send(body)
        await _start(send, status, JSON, len(reply))
        await send({"type": "http.response.body", "body": reply})

    return app


async def _lifespan(upstream: Upstream, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await upstream.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await upstream.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _start(send: Send, status: int, content_type: str, length: int | None = None) -> None:
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})


VARIANTS: dict[str, Callable[[str], Any]] = {
    "litestar-httpx": lambda url: litestar_app(HttpxUpstream(url)),
    "litestar-aiohttp": lambda url: litestar_app(AiohttpUpstream(url)),
    "asgi-aiohttp": lambda url: asgi_app(AiohttpUpstream(url)),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mini_proxy")
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--upstream", required=True, help="origin, e.g. http://127.0.0.1:8001")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = VARIANTS[args.variant](args.upstream.rstrip("/") + "/v1/chat/completions")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
