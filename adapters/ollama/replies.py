"""Ollama's answers as OpenAI's (pure): the reply shapes decoded typed, and the JSON bodies built."""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import msgspec

from adapters.base import UpstreamRequest
from adapters.ollama.requests import field_value
from gateway.errors import (
    UpstreamProtocolError,
)

# --- Ollama's replies, decoded typed (fields we do not read are skipped, not built) ----------


_encode = msgspec.json.Encoder().encode


class Function(msgspec.Struct):
    name: str = ""
    arguments: dict[str, Any] | None = None


class ToolCall(msgspec.Struct):
    function: Function
    id: str = ""


class Message(msgspec.Struct):
    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] | None = None


class Reply(msgspec.Struct):
    """One ``/api/chat`` or ``/api/generate`` answer: a whole reply or one stream line."""

    message: Message | None = None  # chat
    response: str = ""  # generate
    thinking: str = ""  # generate
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0
    logprobs: list[dict[str, Any]] | None = None
    error: str | None = None


class Embeddings(msgspec.Struct):
    embeddings: list[list[float]] = []
    prompt_eval_count: int = 0
    error: str | None = None


REPLY = msgspec.json.Decoder(Reply)
EMBEDDINGS = msgspec.json.Decoder(Embeddings)


# --- replies: Ollama → OpenAI (pure) ---------------------------------------------------------


def finish_reason(done_reason: str, called_tools: bool) -> str:
    if called_tools:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage(reply: Reply | Embeddings) -> dict[str, int]:
    completion = reply.eval_count if isinstance(reply, Reply) else 0
    prompt = reply.prompt_eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def openai_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Ollama's whole tool calls as OpenAI's: arguments become a JSON string, ids are kept."""
    return [
        {
            # Older Ollama versions send no id; clients need one to answer the call.
            "id": call.id or "call_" + os.urandom(12).hex(),
            "type": "function",
            "function": {
                "name": call.function.name,
                "arguments": _encode(call.function.arguments or {}).decode(),
            },
        }
        for call in calls
    ]


def openai_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Ollama's per-token logprobs are OpenAI's ``logprobs.content`` entries minus empty keys."""
    if not entries:
        return None
    return {"content": [{"bytes": None, "top_logprobs": [], **e} for e in entries]}


def chat_completion(reply: Reply, request: UpstreamRequest, created: int) -> dict[str, Any]:
    raise_in_band(reply)
    message = reply.message or Message()
    calls = openai_tool_calls(message.tool_calls or [])
    out: dict[str, Any] = {"role": "assistant", "content": message.content or None}
    if not calls and out["content"] is None:
        out["content"] = ""
    if message.thinking:
        out["reasoning_content"] = message.thinking
    if calls:
        out["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": out,
        "logprobs": openai_logprobs(reply.logprobs),
        "finish_reason": finish_reason(reply.done_reason, bool(calls)),
    }
    return envelope("chatcmpl", "chat.completion", request, created, [choice], usage(reply))


def text_completion(reply: Reply, request: UpstreamRequest, created: int) -> dict[str, Any]:
    raise_in_band(reply)
    choice = {
        "text": reply.response,
        "index": 0,
        "logprobs": None,
        "finish_reason": finish_reason(reply.done_reason, False),
    }
    return envelope("cmpl", "text_completion", request, created, [choice], usage(reply))


def embedding_list(reply: Embeddings, request: UpstreamRequest) -> dict[str, Any]:
    raise_in_band(reply)
    as_base64 = field_value(request.fields, "encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v}
        for i, v in enumerate(reply.embeddings)
    ]
    body = usage(reply)
    del body["completion_tokens"]
    return {"object": "list", "data": data, "model": request.model, "usage": body}


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32s (what the openai SDK asks for by default)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def envelope(
    prefix: str,
    obj: str,
    request: UpstreamRequest,
    created: int,
    choices: list[dict[str, Any]],
    tokens: dict[str, int] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"{prefix}-{request.request_id}",
        "object": obj,
        "created": created,
        "model": request.model,
        "choices": choices,
    }
    if tokens is not None:
        out["usage"] = tokens
    return out


def raise_in_band(reply: Reply | Embeddings) -> None:
    # A 200 whose body is Ollama's error shape: not a reply, whatever the status said.
    if reply.error is not None:
        raise UpstreamProtocolError(f"Ollama: {reply.error}")
