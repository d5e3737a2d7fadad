"""A fake vLLM OpenAI-compatible server, run as a process the way turnout runs ``vllm serve``.

    python -m tests.fakes.vllm_server serve MODEL --host H --port P [--enable-sleep-mode]

It speaks the endpoints vLLM documents, shaped as vLLM answers them: ``GET /health`` (200, no
body), ``GET /version``, ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (streamed or not; the reply echoes the last user message), and sleep
mode (``vllm/entrypoints/serve/sleep/api_router.py``): ``POST /sleep?level=N``,
``POST /wake_up``, ``GET /is_sleeping`` -> ``{"is_sleeping": bool}``. As in vLLM those three
exist only with ``VLLM_SERVER_DEV_MODE=1`` (else 404), sleeping needs ``--enable-sleep-mode``
(else 500), and requests that need the weights answer 503 while asleep. Like vLLM's own FIXME
says, ``/sleep`` and ``/wake_up`` answer before the engine has settled: ``/is_sleeping`` turns
a little later, so a client must poll it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

from aiohttp import web

# How long the engine takes to settle after /sleep or /wake_up has answered.
SETTLE_SECONDS = 0.1


class FakeVllm:
    def __init__(self, served: str, max_model_len: int, sleep_mode: bool) -> None:
        self.served = served
        self.max_model_len = max_model_len
        self.sleep_mode = sleep_mode
        self.sleeping = False
        self.level = 0
        self._settling: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        if os.environ.get("VLLM_SERVER_DEV_MODE") == "1":
            app.router.add_post("/sleep", self.sleep)
            app.router.add_post("/wake_up", self.wake_up)
            app.router.add_get("/is_sleeping", self.is_sleeping)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.11.0+fake"})

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.served,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.served,
            "parent": None,
            "max_model_len": self.max_model_len,
        }
        return web.json_response({"object": "list", "data": [card]})

    def _settle(self, sleeping: bool) -> None:
        async def later() -> None:
            await asyncio.sleep(SETTLE_SECONDS)
            self.sleeping = sleeping

        task = asyncio.get_running_loop().create_task(later())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def sleep(self, request: web.Request) -> web.Response:
        if not self.sleep_mode:
            return error(
                500, "Sleep mode is not enabled in the model config", "InternalServerError"
            )
        self.level = int(request.query.get("level", "1"))
        self._settle(True)
        return web.Response(status=200)

    async def wake_up(self, request: web.Request) -> web.Response:
        self._settle(False)
        return web.Response(status=200)

    async def is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.sleeping})

    def _refused(self, body: dict[str, Any]) -> web.Response | None:
        if self.sleeping:
            return error(503, "The model is sleeping; wake it up first", "ServiceUnavailableError")
        if body.get("model") not in (None, self.served):
            return error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        refused = self._refused(body)
        if refused is not None:
            return refused
        messages: list[dict[str, Any]] = body.get("messages") or []
        last: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        content = last.get("content", "")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        text = f"echo: {content}"
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.get("stream"):
            return await self._stream_chat(request, body, ident, created, text, usage)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "tool_calls": [],
            "reasoning_content": None,
        }
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": self.served,
                "choices": [choice | {"stop_reason": None}],
                "usage": usage | {"prompt_tokens_details": None},
                "prompt_logprobs": None,
            }
        )

    async def _stream_chat(
        self,
        request: web.Request,
        body: dict[str, Any],
        ident: str,
        created: int,
        text: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": ident, "object": "chat.completion.chunk", "created": created}
        head["model"] = self.served

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse(head | {"choices": [choice]})

        await response.write(chunk({"role": "assistant", "content": ""}, None))
        for piece in text.split(" "):
            await response.write(chunk({"content": piece + " "}, None))
        await response.write(chunk({"content": ""}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(sse(head | {"choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        refused = self._refused(body)
        if refused is not None:
            return refused
        choice = {"index": 0, "text": f"echo: {body.get('prompt', '')}", "logprobs": None}
        return web.json_response(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.served,
                "choices": [choice | {"finish_reason": "stop", "stop_reason": None}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        )


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def error(status: int, message: str, kind: str) -> web.Response:
    # vLLM's ErrorResponse, wrapped in "error" as its OpenAI server sends it.
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


def main() -> None:
    parser = argparse.ArgumentParser(prog="vllm")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-model-len", type=int, default=4096)
    serve.add_argument("--served-model-name", default="")
    serve.add_argument("--enable-sleep-mode", action="store_true")
    args = parser.parse_args()
    fake = FakeVllm(
        args.served_model_name or args.model, args.max_model_len, args.enable_sleep_mode
    )
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
