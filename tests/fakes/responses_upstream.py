"""A fake OpenAI Responses API (``POST /v1/responses``): a real aiohttp server on loopback.

Speaks the documented wire format: a whole Response object (``object: "response"``, ``output``
items, ``usage`` with ``input_tokens_details`` / ``output_tokens_details``), or its event stream
(``event: <type>`` + ``data: {"type": ..., "sequence_number": n, ...}``): response.created,
response.in_progress, response.output_item.added, response.content_part.added,
response.output_text.delta..., response.output_text.done, response.content_part.done,
response.output_item.done, response.completed. Errors are OpenAI's envelope
(``{"error": {"message", "type", "param", "code"}}``).

It keeps state the way OpenAI does: every answer with ``store`` (default true) is kept, and a
``previous_response_id`` it does not know is a 404 ("Previous response with id ... not found").
The reply text is ``"echo: <last user text> (turn N)"``, N counting the stored turns before it,
so a test sees whether the upstream itself held the conversation.

With ``include: ["reasoning.encrypted_content"]`` the output starts with a reasoning item whose
``encrypted_content`` is ``"enc:" + <the response id>``; a request that sends back such an item
is recorded (``fake.encrypted_seen``) and must carry it unchanged, or it is a 400.

``POST /v1/chat/completions`` answers too (OpenAI serves both): ``"echo: <last user text>
(chat)"``, what a request translated to chat gets.

Models ``error-<NNN>`` answer that status with the envelope. ``GET /v1/models`` is an
empty list (the gateway's health probe).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import RecordedRequest
from tests.fakes.server import LoopbackServer, serve


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _envelope(status: int, message: str, param: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


def _last_user_text(items: list[Any]) -> str:
    for item in reversed(items):
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            return content
        for part in content or ():
            if part.get("type") == "input_text":
                return str(part.get("text", ""))
    return ""


class FakeResponses(LoopbackServer):
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests: list[RecordedRequest] = []
        # Stored responses by id: (previous id, input items, output items).
        self.stored: dict[str, tuple[str | None, list[Any], list[Any]]] = {}
        self.encrypted_seen: list[str] = []
        self._runner: web.ServerRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}/v1"

    def posts(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.method == "POST"]

    def post_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]

    async def start(self) -> None:
        self._runner, self._port = await serve(self._handle, self.host)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await request.content.read() if request.body_exists else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(RecordedRequest(request.method, request.path, headers, body, raw, 0.0))
        if request.method == "GET" and request.path == "/v1/models":
            return web.json_response({"object": "list", "data": []})
        if request.method == "POST" and request.path == "/v1/chat/completions":
            return await self._chat(request, body)
        if request.method != "POST" or request.path != "/v1/responses":
            return _envelope(404, f"Invalid URL ({request.method} {request.path})")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _envelope(400, "Missing required parameter: 'model'.", "model")
        model = body["model"]
        if model.startswith("error-"):
            return _envelope(int(model[6:]), f"scripted {model}")
        return await self._answer(request, body)

    async def _chat(self, request: web.BaseRequest, body: Any) -> web.StreamResponse:
        """OpenAI's chat completions, as the same API serves them: ``"echo: <last user text>
        (chat)"``, whole or as two content chunks, a usage chunk and ``[DONE]``."""
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return _envelope(400, "Missing required parameter: 'messages'.", "messages")
        text = f"echo: {_last_user_text(messages)} (chat)"
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        head = {"id": _id("chatcmpl-"), "created": 1_700_000_000, "model": body.get("model")}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            reply = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            return web.json_response(reply)
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        chunk = {**head, "object": "chat.completion.chunk"}
        deltas = [({"role": "assistant", "content": text}, None), ({}, "stop")]
        for delta, finish in deltas:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            await out.write(f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n".encode())
        await out.write(
            f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode()
        )
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    async def _answer(self, request: web.BaseRequest, body: dict[str, Any]) -> web.StreamResponse:
        items = body.get("input") or []
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        for item in items:
            if isinstance(item, dict) and item.get("type") == "reasoning":
                sealed = item.get("encrypted_content")
                if not isinstance(sealed, str) or not sealed.startswith("enc:"):
                    return _envelope(400, "The encrypted content could not be verified.", "input")
                self.encrypted_seen.append(sealed)
        previous = body.get("previous_response_id")
        turns = 0
        at = previous
        while at is not None:
            if at not in self.stored:
                return _envelope(
                    404, f"Previous response with id '{at}' not found.", "previous_response_id"
                )
            turns += 1
            at = self.stored[at][0]
        response_id = _id("resp_")
        text = f"echo: {_last_user_text(items)} (turn {turns + 1})"
        output: list[dict[str, Any]] = []
        if "reasoning.encrypted_content" in (body.get("include") or ()):
            output.append(
                {
                    "id": _id("rs_"),
                    "type": "reasoning",
                    "summary": [],
                    "encrypted_content": f"enc:{response_id}",
                }
            )
        message = {
            "id": _id("msg_"),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
        output.append(message)
        if body.get("store", True):
            self.stored[response_id] = (previous, items, output)
        response = self._response(response_id, body, output, "completed")
        if not body.get("stream"):
            return web.json_response(response)
        return await self._stream(request, body, response, message, text)

    def _response(
        self, response_id: str, body: dict[str, Any], output: list[Any], status: str
    ) -> dict[str, Any]:
        done = status == "completed"
        return {
            "id": response_id,
            "object": "response",
            "created_at": 1_700_000_000,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"],
            "output": output if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": 11,
                "input_tokens_details": {"cached_tokens": 3},
                "output_tokens": 7,
                "output_tokens_details": {"reasoning_tokens": 2},
                "total_tokens": 18,
            }
            if done
            else None,
            "user": None,
            "metadata": {},
        }

    async def _stream(
        self,
        request: web.BaseRequest,
        body: dict[str, Any],
        response: dict[str, Any],
        message: dict[str, Any],
        text: str,
    ) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        seq = 0

        async def emit(kind: str, **payload: Any) -> None:
            nonlocal seq
            data = json.dumps({"type": kind, "sequence_number": seq, **payload})
            seq += 1
            await out.write(f"event: {kind}\ndata: {data}\n\n".encode())

        started = self._response(response["id"], body, [], "in_progress")
        await emit("response.created", response=started)
        await emit("response.in_progress", response=started)
        index = 0
        for item in response["output"]:
            if item["type"] != "message":
                await emit("response.output_item.added", output_index=index, item=item)
                await emit("response.output_item.done", output_index=index, item=item)
                index += 1
        item_id = message["id"]
        opened = {**message, "status": "in_progress", "content": []}
        await emit("response.output_item.added", output_index=index, item=opened)
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        await emit("response.content_part.added", **where, part=empty)
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
            await emit("response.output_text.delta", **where, delta=piece, logprobs=[])
        await emit("response.output_text.done", **where, text=text, logprobs=[])
        await emit("response.content_part.done", **where, part=message["content"][0])
        await emit("response.output_item.done", output_index=index, item=message)
        await emit("response.completed", response=response)
        await out.write_eof()
        return out
