"""The campaign's misbehaving upstream: one aiohttp server, one behaviour per requested model.

Run as ``python -m bench.campaign_upstream --port N`` (its own process, so its CPU never counts
as the gateway's). It speaks OpenAI's wire format only: turnout translates /v1/messages and
/v1/responses to chat completions for an ``openai`` provider, so one upstream serves every
ingress. The request's ``model`` picks the behaviour (``huge-64`` carries a size in MB):

==============  ==================================================================================
``ok``          A normal answer (``OK_TEXT``), streamed when asked: the healthy fallback target.
``comments``    200 + SSE headers, then only ``: ping`` comments, for ever.
``drip``        200 JSON with a Content-Length, one byte a second.
``trickle``     A content event every 0.3 s, for ever.
``gzip``        A normal answer (``ZIP_TEXT``), gzip-encoded when the request accepts gzip;
``deflate``     the same with deflate. Identity when not asked, as a real server does.
``forcegzip``   gzip whatever the request asked for (a misbehaving server or proxy).
``truncated``   200 application/json, the body cut in the middle of a key.
``html``        200 text/html: a proxy's error page.
``badsse``      200 text/event-stream whose first event is not JSON, then ``[DONE]``.
``huge-N``      One SSE event of N MB with no terminator, then silence until the client leaves.
``bulk-N``      N MB of content in 16 KB deltas as fast as possible, then a normal end.
``bigjson-N``   A non-stream answer whose content is N MB.
==============  ==================================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

OK_TEXT = "fallback-ok"
ZIP_TEXT = "gzip-ok"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
CHUNK_PREFIX = (
    b'data: {"id":"chatcmpl-c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"'
)
CHUNK_SUFFIX = b'"},"finish_reason":null}]}\n\n'
FINISH = (
    b'data: {"id":"chatcmpl-c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)

Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def chunk(text: str) -> bytes:
    return CHUNK_PREFIX + text.encode() + CHUNK_SUFFIX


def completion(text: str, path: str) -> dict[str, Any]:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if path.endswith("/embeddings"):
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "model": "m",
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    if path.endswith("/v1/completions"):
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop"}
        return {"id": "cmpl-c", "object": "text_completion", "created": 1, "model": "m",
                "choices": [choice], "usage": usage}  # fmt: skip
    message = {"role": "assistant", "content": text}
    return {"id": "chatcmpl-c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage}  # fmt: skip


def stream_bytes(text: str, path: str) -> bytes:
    if path.endswith("/v1/completions"):
        event = {"id": "cmpl-c", "object": "text_completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "text": text, "finish_reason": None}]}  # fmt: skip
        done = {**event, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
        return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (event, done)) + (
            b"data: [DONE]\n\n"
        )
    return chunk(text) + FINISH


async def answer(request: web.Request, body: dict[str, Any], text: str) -> web.StreamResponse:
    if body.get("stream"):
        return web.Response(body=stream_bytes(text, request.path), headers=SSE_HEADERS)
    return web.json_response(completion(text, request.path))


async def ok(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return await answer(request, body, OK_TEXT)


async def compressed(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    model = str(body.get("model"))
    forced = model == "forcegzip"
    encoding = "gzip" if forced else model
    if body.get("stream"):
        raw, headers = stream_bytes(ZIP_TEXT, request.path), dict(SSE_HEADERS)
    else:
        raw = json.dumps(completion(ZIP_TEXT, request.path)).encode()
        headers = {"Content-Type": "application/json"}
    if forced or encoding in request.headers.get("Accept-Encoding", "").lower():
        # wbits 31: a gzip container; 15: zlib (what HTTP calls deflate).
        packer = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
        raw = packer.compress(raw) + packer.flush()
        headers["Content-Encoding"] = encoding
    return web.Response(body=raw, headers=headers)


async def started(
    request: web.Request, content_type: str = "text/event-stream"
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**SSE_HEADERS, "Content-Type": content_type})
    await response.prepare(request)
    return response


async def comments(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    response = await started(request)
    while True:
        await response.write(b": ping\n\n")
        await asyncio.sleep(0.2)


async def trickle(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    response = await started(request)
    while True:
        await response.write(chunk("t"))
        await asyncio.sleep(0.3)


async def drip(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    data = json.dumps(completion(OK_TEXT, request.path)).encode()
    response = web.StreamResponse(
        headers={"Content-Type": "application/json", "Content-Length": str(len(data))}
    )
    await response.prepare(request)
    for i in range(len(data)):
        await response.write(data[i : i + 1])
        await asyncio.sleep(1.0)
    return response


async def truncated(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    text = json.dumps(completion(OK_TEXT, request.path))
    return web.Response(text=text[: len(text) // 3], content_type="application/json")


async def html(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    return web.Response(text=page, content_type="text/html")


async def badsse(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    return web.Response(body=b'data: {"id": broken, "choi\n\ndata: [DONE]\n\n', headers=SSE_HEADERS)


async def huge(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    size = int(str(body.get("model")).split("-")[1]) * 2**20
    response = await started(request)
    await response.write(CHUNK_PREFIX)
    block = b"a" * 2**20
    for _ in range(size // len(block)):
        await response.write(block)
    await asyncio.sleep(3600)  # no terminator, ever: the gateway must give up on its own
    return response


async def bulk(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    size = int(str(body.get("model")).split("-")[1]) * 2**20
    response = await started(request)
    event = chunk("b" * 16384)
    batch = event * 16
    for _ in range(size // (16384 * 16)):
        await response.write(batch)
    await response.write(FINISH)
    await response.write_eof()
    return response


async def bigjson(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    size = int(str(body.get("model")).split("-")[1]) * 2**20
    return web.json_response(completion("j" * size, request.path))


BEHAVIOURS: dict[str, Handler] = {
    "ok": ok,
    "gzip": compressed,
    "deflate": compressed,
    "forcegzip": compressed,
    "comments": comments,
    "trickle": trickle,
    "drip": drip,
    "truncated": truncated,
    "html": html,
    "badsse": badsse,
    "huge": huge,
    "bulk": bulk,
    "bigjson": bigjson,
}


async def post(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    name = str(body.get("model", "ok")).split("-")[0]
    return await BEHAVIOURS.get(name, ok)(request, body)


async def models(request: web.Request) -> web.Response:
    data = [{"id": name, "object": "model", "created": 1, "owned_by": "campaign"}
            for name in BEHAVIOURS]  # fmt: skip
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "time": time.time()})


def make_app() -> web.Application:
    app = web.Application(client_max_size=2**30)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, post)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Handlers of hung cases sleep for ever: do not wait for them when stopped.
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=0.5,
    )


if __name__ == "__main__":
    main()
