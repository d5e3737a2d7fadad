"""The ``example-echo`` adapter kind: answers chat requests itself, whole or streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from adapters.base import Probe, UpstreamReply, UpstreamRequest
from gateway.config import Provider


def _answer(request: UpstreamRequest) -> str:
    messages = json.loads(bytes(request.fields["messages"]))
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    return f"example echo: {users[-1] if users else ''}"


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class EchoStream:
    def __init__(self, request: UpstreamRequest) -> None:
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        words = _answer(self._request).split(" ")
        base = {"id": "chatcmpl-example", "object": "chat.completion.chunk", "created": 0}
        base["model"] = self._request.model
        for i, word in enumerate(words):
            delta = {"content": word if i == 0 else " " + word}
            yield _event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        yield _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {
            "prompt_tokens": 3,
            "completion_tokens": len(words),
            "total_tokens": 3 + len(words),
        }
        yield _event({**base, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        return None


class EchoAdapter:
    def __init__(self, name: str, provider: Provider, session: Any) -> None:
        self.name = name
        self.provider = provider

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        text = _answer(request)
        body = {
            "id": "chatcmpl-example",
            "object": "chat.completion",
            "created": 0,
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        }
        return UpstreamReply(200, json.dumps(body).encode())

    async def open_stream(self, request: UpstreamRequest) -> EchoStream:
        return EchoStream(request)

    async def probe(self) -> Probe:
        return Probe(True, "example-echo answers locally")

    async def close(self) -> None:
        return None
