"""A fake OpenAI-compatible upstream: a real aiohttp HTTP server on a loopback port.

The gateway's tests and benchmarks point real HTTP clients at it, so everything on the wire
(status lines, headers, JSON key order, SSE framing) follows OpenAI's documented format, or the
recorded quirks of llama-server / mlx_lm.server (see ``flavor`` below).

Usage::

    async with FakeOpenAI() as fake:                 # or: with FakeOpenAI() as fake  (own thread)
        client = AsyncOpenAI(base_url=fake.url, api_key="x")
        await client.chat.completions.create(model="ok", messages=[...])
        assert fake.requests[0].body["messages"] == [...]

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with ``stream: true``),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health``. Any other path gets OpenAI's 404.
Every request, whatever its path, is recorded in ``fake.requests`` (a cloud "canary" upstream
can assert it received nothing).

Scenarios
---------
The behaviour of each POST request is a *scenario*, picked by the first rule that applies:

1. ``fake.script``: a FIFO list of scenario names, one popped per POST request.
   ``fake.fail_next(n, status)`` puts ``n`` x ``"error-<status>"`` at its front.
2. ``fake.scenario``: a sticky scenario for every POST request while it is not None.
3. the request's ``model``, if it is a scenario name. Any other model (``"gpt-4o"``) is ``"ok"``.

======================  ========================================================================
``ok``                  Normal reply. Text is ``"echo: <last user message>"`` (completions:
                        ``"echo: <prompt>"``), streamed as ``fake.stream_chunks`` content deltas
                        (an even split of the text, so deltas can be ``""`` when the text is
                        shorter). ``max_tokens`` / ``max_completion_tokens`` below that count
                        truncates the reply to that many deltas with finish_reason ``"length"``.
``tools``               Chat replies with tool calls: ``fake.tool_calls`` (list of
                        ``(name, arguments_json)``) or else one call of the request's first tool
                        (default ``get_weather``) with arguments ``{"city":"Paris"}``.
``error-<NNN>``         Status NNN (400..599) with the flavor's error body, e.g. ``error-400``,
                        ``error-401``, ``error-404``, ``error-500``, ``error-503``. ``error-429``
                        adds ``Retry-After: <fake.retry_after>``.
``slow-first-byte``     Sleeps ``fake.first_byte_delay`` seconds before the status line, then ok.
``drop-mid-stream``     Sends ``fake.mid_stream_after`` SSE events, then closes the connection
                        (no ``[DONE]``, no final HTTP chunk). Non-stream: half the body, then close.
``stall-mid-stream``    Sends ``fake.mid_stream_after`` events, then goes silent until ``stop()``.
                        Non-stream: half the body, then silence.
``error-mid-stream``    Sends ``fake.mid_stream_after`` events, then an SSE error event, then ends
                        the response cleanly (no ``[DONE]``). Non-stream: like drop-mid-stream.
``hang``                Never answers (the connection is closed at ``stop()``).
``context-exceeded``    OpenAI's own context refusal: 400 with code ``context_length_exceeded``,
                        "This model's maximum context length is M tokens. However, your
                        messages resulted in N tokens. ...", M being ``fake.context_window``
                        and N M plus a quarter of the request body's bytes.
======================  ========================================================================

``fake.reasoning``: a text (default None) every chat reply thinks first, as llama-server's
``reasoning_content`` (``--reasoning-format auto``): whole replies carry it next to ``content``;
streams send it as ``reasoning_content`` deltas (split like the text) before the content deltas.
For ``<think>`` tags left in the text, send a user message holding them: the echo repeats it.

A name in ``script``/``scenario`` that is not a scenario gets a 500 so typos are loud.
GET endpoints are never scripted; ``fake.healthy = False`` makes ``/health`` answer 503.

``fake.compress``: None (default) answers uncompressed; ``"honour"`` compresses API answers
(JSON and SSE) with the first coding the request's ``Accept-Encoding`` offers, as servers behind
nginx or a CDN do; ``"gzip"`` compresses with gzip whatever the request asked for; any other
value (``"br"``, ``"zstd"``, ``"compress"``) labels the answers with that ``Content-Encoding``
without encoding them, as a misconfigured proxy does (a client that cannot decode the coding
fails either way).

Flavors (``FakeOpenAI(flavor=...)``), from /work/shared/reference/engines/samples/
---------------------------------------------------------------------------------
``openai``    OpenAI's documented format (default).
``llamacpp``  llama-server: keys in its order, first stream delta ``{"role":"assistant",
              "content":null}``, tool-call reply content ``""``, first tool-call delta already
              carries the first argument fragment, ``timings`` on the last chunk / the response,
              errors ``{"error":{"code","message","type"}}``, mid-stream errors as an ``error:``
              SSE line, paths also served without ``/v1``.
``mlx``       mlx_lm.server: Python ``json.dumps`` formatting (``", "``, ASCII escapes), stream
              starts with ``: keepalive`` comments, every delta repeats ``"role":"assistant"``
              (no separate role chunk), usage chunk has ``"object":"chat.completion"``, tool-call
              replies have ``content: null`` and the whole call in one chunk, errors
              ``{"error": "<string>"}``, paths also served without ``/v1``.

Standalone (benchmarks)::

    python -m tests.fakes.openai_upstream --port 8001 [--flavor openai] [--chunks 20]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import json
import random
import re
import signal
import string
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from tests.fakes.server import LoopbackServer, serve

OK = "ok"
TOOLS = "tools"
SLOW_FIRST_BYTE = "slow-first-byte"
DROP_MID_STREAM = "drop-mid-stream"
STALL_MID_STREAM = "stall-mid-stream"
ERROR_MID_STREAM = "error-mid-stream"
HANG = "hang"
CONTEXT_EXCEEDED = "context-exceeded"
MID_STREAM = frozenset({DROP_MID_STREAM, STALL_MID_STREAM, ERROR_MID_STREAM})
SCENARIOS = frozenset({OK, TOOLS, SLOW_FIRST_BYTE, HANG, CONTEXT_EXCEEDED, *MID_STREAM})

DONE = b"data: [DONE]\n\n"
# Placeholder encoded into a chunk once per response; the encoded chunk is then split around it
# so every delta of the stream costs one bytes join instead of one whole-chunk encode.
_SLOT = "\x00fake-slot\x00"
_ALNUM = string.ascii_letters + string.digits
_rng = random.Random()
# OpenAI-like tokenization of tool arguments: '{"city":"Paris"}' -> '{"', 'city', '":"', ...
_FRAGMENT_RE = re.compile(r"\w+|\W+")
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)


def error_status(scenario: str) -> int | None:
    """The HTTP status of an ``error-NNN`` scenario (400..599), else None."""
    code = scenario[6:]
    if scenario.startswith("error-") and len(code) == 3 and code.isdigit():
        status = int(code)
        if 400 <= status <= 599:
            return status
    return None


def is_scenario(name: str) -> bool:
    return name in SCENARIOS or error_status(name) is not None


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake received it. ``headers`` keys are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None (no body / invalid JSON; see ``raw``)
    raw: bytes
    received_at: float  # time.monotonic()
    scenario: str | None = None  # scenario applied (POST API requests only)

    @property
    def model(self) -> str | None:
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else None

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Meta:
    """Per-response envelope values shared by every chunk of one reply."""

    id: str
    created: int
    model: str
    prompt_tokens: int
    completion_tokens: int
    include_usage: bool


def _random_id(n: int) -> str:
    return "".join(_rng.choices(_ALNUM, k=n))


def _fragments(arguments: str) -> list[str]:
    return _FRAGMENT_RE.findall(arguments)


class OpenAIFlavor:
    """OpenAI's wire format. Subclasses override only what their server does differently."""

    name: ClassVar[str] = "openai"
    fingerprint: ClassVar[str] = "fp_f4ke0pena1"
    json_content_type: ClassVar[str] = "application/json"
    sse_content_type: ClassVar[str] = "text/event-stream; charset=utf-8"
    preamble: ClassVar[tuple[bytes, ...]] = ()  # SSE bytes sent before the first chunk
    serves_unversioned_paths: ClassVar[bool] = False  # also /chat/completions without /v1
    requires_model: ClassVar[bool] = True
    role_delta: ClassVar[dict[str, Any] | None] = {"role": "assistant", "content": ""}
    finish_delta: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        self.json_headers = {"Content-Type": self.json_content_type}
        self.sse_headers = {"Content-Type": self.sse_content_type, "Cache-Control": "no-cache"}
        self._slot = self.encode(_SLOT)
        self._role_delta = None if self.role_delta is None else self.encode(self.role_delta)
        self._errors: dict[int, bytes] = {}
        self.health_ok = self.encode({"status": "ok"})

    def encode(self, obj: Any) -> bytes:
        return msgspec.json.encode(obj)

    def sse(self, obj: Any) -> bytes:
        return b"data: " + self.encode(obj) + b"\n\n"

    def _template(self, chunk: dict[str, Any]) -> tuple[bytes, bytes]:
        """Split one SSE event around the _SLOT value: event = head + encoded value + tail."""
        event = self.sse(chunk)
        at = event.index(self._slot)
        return event[:at], event[at + len(self._slot) :]

    # ids and usage

    def chat_id(self) -> str:
        return "chatcmpl-" + _random_id(29)

    def text_id(self) -> str:
        return "cmpl-" + _random_id(29)

    def tool_call_id(self) -> str:
        return "call_" + _random_id(24)

    def tool_arguments(self, arguments: str) -> str:
        return arguments

    def usage(self, meta: Meta) -> dict[str, Any]:
        return {
            "prompt_tokens": meta.prompt_tokens,
            "completion_tokens": meta.completion_tokens,
            "total_tokens": meta.prompt_tokens + meta.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    # chat, non-stream

    def message(self, text: str, calls: list[ToolCall]) -> dict[str, Any]:
        if not calls:
            return {"role": "assistant", "content": text, "refusal": None}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in calls
            ],
            "refusal": None,
        }

    def chat_completion(self, meta: Meta, message: dict[str, Any], finish: str) -> dict[str, Any]:
        return {
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": self.usage(meta),
            "system_fingerprint": self.fingerprint,
        }

    # chat, stream

    def chat_chunk(self, meta: Meta, delta: Any, finish: str | None) -> dict[str, Any]:
        chunk = {
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if meta.include_usage:  # OpenAI: with include_usage every chunk carries "usage": null
            chunk["usage"] = None
        return chunk

    def finish_chunk(self, meta: Meta, finish: str) -> dict[str, Any]:
        return self.chat_chunk(meta, self.finish_delta, finish)

    def chat_usage_chunk(self, meta: Meta) -> dict[str, Any]:
        return {
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": self.fingerprint,
            "choices": [],
            "usage": self.usage(meta),
        }

    def content_delta(self, piece: str) -> dict[str, Any]:
        return {"content": piece}

    def text_deltas(self, pieces: list[str]) -> list[bytes]:
        deltas = [self.encode(self.content_delta(p)) for p in pieces]
        return deltas if self._role_delta is None else [self._role_delta, *deltas]

    def tool_deltas(self, calls: list[ToolCall]) -> list[bytes]:
        """OpenAI: id/type/name with arguments "" (the first one merged with the role), then
        one delta per argument fragment."""
        deltas: list[bytes] = []
        for i, call in enumerate(calls):
            head = {
                "index": i,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            first = (
                {"role": "assistant", "content": None, "tool_calls": [head]}
                if i == 0
                else {"tool_calls": [head]}
            )
            deltas.append(self.encode(first))
            deltas.extend(self._argument_delta(i, f) for f in _fragments(call.arguments))
        return deltas

    def _argument_delta(self, index: int, fragment: str) -> bytes:
        return self.encode({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def chat_events(self, meta: Meta, deltas: list[bytes], finish: str) -> list[bytes]:
        head, tail = self._template(self.chat_chunk(meta, _SLOT, None))
        events = [*self.preamble, *(head + d + tail for d in deltas)]
        events.append(self.sse(self.finish_chunk(meta, finish)))
        if meta.include_usage:
            events.append(self.sse(self.chat_usage_chunk(meta)))
        events.append(DONE)
        return events

    # legacy completions

    def text_completion(self, meta: Meta, text: str, finish: str) -> dict[str, Any]:
        return {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": self.fingerprint,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": self.usage(meta),
        }

    def text_chunk(self, meta: Meta, text: str, finish: str | None) -> dict[str, Any]:
        chunk = {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "model": meta.model,
            "system_fingerprint": self.fingerprint,
        }
        if meta.include_usage:
            chunk["usage"] = None
        return chunk

    def text_final_chunk(self, meta: Meta, finish: str) -> dict[str, Any]:
        return self.text_chunk(meta, "", finish)

    def text_usage_chunk(self, meta: Meta) -> dict[str, Any] | None:
        return {**self.text_chunk(meta, "", None), "choices": [], "usage": self.usage(meta)}

    def text_events(self, meta: Meta, pieces: list[str], finish: str) -> list[bytes]:
        head, tail = self._template(self.text_chunk(meta, _SLOT, None))
        events = [*self.preamble, *(head + self.encode(p) + tail for p in pieces)]
        events.append(self.sse(self.text_final_chunk(meta, finish)))
        usage = self.text_usage_chunk(meta) if meta.include_usage else None
        if usage is not None:
            events.append(self.sse(usage))
        events.append(DONE)
        return events

    # errors and listings

    _ERRORS: ClassVar[dict[int, tuple[str, str, str | None]]] = {
        400: ("Invalid request (scripted by the fake upstream).", "invalid_request_error", None),
        401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
        404: (
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        429: (
            "Rate limit reached for requests (scripted by the fake upstream).",
            "requests",
            "rate_limit_exceeded",
        ),
        500: (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        503: ("The server is overloaded or not ready yet.", "server_error", None),
    }

    def _error_fields(self, status: int) -> tuple[str, str, str | None]:
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        return self._ERRORS.get(
            status, (f"Scripted error {status} from the fake upstream.", default_type, None)
        )

    def error_object(self, status: int, message: str | None) -> Any:
        msg, type_, code = self._error_fields(status)
        if message is not None:  # a specific complaint (bad JSON, bad URL): no scripted code
            msg, code = message, None
        return {"error": {"message": msg, "type": type_, "param": None, "code": code}}

    def error_body(self, status: int, message: str | None = None) -> bytes:
        if message is not None:
            return self.encode(self.error_object(status, message))
        cached = self._errors.get(status)  # scripted errors repeat: encode each status once
        if cached is None:
            cached = self._errors[status] = self.encode(self.error_object(status, None))
        return cached

    def stream_error_event(self) -> bytes:
        return self.sse(self.error_object(500, None))

    def models(self, ids: Iterable[str], created: int) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": created, "owned_by": "openai"} for i in ids
            ],
        }


class LlamaCppFlavor(OpenAIFlavor):
    """llama-server (samples llama-*.json / *.sse): nlohmann key order, timings, content null/""."""

    name = "llamacpp"
    fingerprint = "b0-unknown"
    json_content_type = "application/json; charset=utf-8"
    sse_content_type = "text/event-stream"
    serves_unversioned_paths = True
    requires_model = False  # single-model mode accepts any model string, or none
    role_delta: ClassVar[dict[str, Any] | None] = {"role": "assistant", "content": None}

    def chat_id(self) -> str:
        return "chatcmpl-" + _random_id(32)

    def text_id(self) -> str:
        return "cmpl-" + _random_id(32)

    def tool_call_id(self) -> str:
        return _random_id(32)

    def usage(self, meta: Meta) -> dict[str, Any]:
        return {
            "completion_tokens": meta.completion_tokens,
            "prompt_tokens": meta.prompt_tokens,
            "total_tokens": meta.prompt_tokens + meta.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def timings(self, meta: Meta) -> dict[str, Any]:
        prompt_ms, predicted_ms = 0.5 * meta.prompt_tokens, 5.0 * meta.completion_tokens
        return {
            "cache_n": 0,
            "prompt_n": meta.prompt_tokens,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": 0.5,
            "prompt_per_second": 2000.0,
            "predicted_n": meta.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": 5.0,
            "predicted_per_second": 200.0,
        }

    def message(self, text: str, calls: list[ToolCall]) -> dict[str, Any]:
        if not calls:
            return {"role": "assistant", "content": text}
        return {
            "role": "assistant",
            "content": "",  # llama.cpp: "" (not null) next to tool_calls
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                    "id": c.id,
                }
                for c in calls
            ],
        }

    def chat_completion(self, meta: Meta, message: dict[str, Any], finish: str) -> dict[str, Any]:
        return {
            "choices": [{"finish_reason": finish, "index": 0, "message": message}],
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": self.fingerprint,
            "object": "chat.completion",
            "usage": self.usage(meta),
            "id": meta.id,
            "timings": self.timings(meta),
        }

    def chat_chunk(self, meta: Meta, delta: Any, finish: str | None) -> dict[str, Any]:
        return {
            "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
            "created": meta.created,
            "id": meta.id,
            "model": meta.model,
            "system_fingerprint": self.fingerprint,
            "object": "chat.completion.chunk",
        }

    def finish_chunk(self, meta: Meta, finish: str) -> dict[str, Any]:
        chunk = self.chat_chunk(meta, self.finish_delta, finish)
        if not meta.include_usage:  # timings ride on the last chunk of the stream
            chunk["timings"] = self.timings(meta)
        return chunk

    def chat_usage_chunk(self, meta: Meta) -> dict[str, Any]:
        return {
            **self.chat_chunk(meta, None, None),
            "choices": [],
            "usage": self.usage(meta),
            "timings": self.timings(meta),
        }

    def tool_deltas(self, calls: list[ToolCall]) -> list[bytes]:
        """llama.cpp: a role-only delta, then per call a head delta that already carries the
        first argument fragment, then the remaining fragments."""
        deltas = [self._role_delta] if self._role_delta is not None else []
        for i, call in enumerate(calls):
            first, *rest = _fragments(call.arguments) or [""]
            head = {
                "index": i,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": first},
            }
            deltas.append(self.encode({"tool_calls": [head]}))
            deltas.extend(self._argument_delta(i, f) for f in rest)
        return deltas

    def text_completion(self, meta: Meta, text: str, finish: str) -> dict[str, Any]:
        return {
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": self.fingerprint,
            "object": "text_completion",
            "usage": self.usage(meta),
            "id": meta.id,
            "timings": self.timings(meta),
        }

    def text_chunk(self, meta: Meta, text: str, finish: str | None) -> dict[str, Any]:
        return {
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": self.fingerprint,
            "object": "text_completion",
            "id": meta.id,
        }

    def text_final_chunk(self, meta: Meta, finish: str) -> dict[str, Any]:
        return self.text_completion(meta, "", finish)  # llama.cpp's final chunk is the full result

    def text_usage_chunk(self, meta: Meta) -> dict[str, Any] | None:
        return None  # usage already rode on the final chunk

    def error_object(self, status: int, message: str | None) -> Any:
        types = {
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            501: "not_supported_error",
            503: "unavailable_error",
        }
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        text = message or self._error_fields(status)[0]
        return {"error": {"code": status, "message": text, "type": types.get(status, default_type)}}

    def stream_error_event(self) -> bytes:
        # llama.cpp writes stream errors as a non-standard "error:" SSE field, without the wrapper.
        return b"error: " + self.encode(self.error_object(500, None)["error"]) + b"\n\n"

    def models(self, ids: Iterable[str], created: int) -> dict[str, Any]:
        ids = list(ids)
        return {
            "models": [
                {
                    "name": i,
                    "model": i,
                    "modified_at": "",
                    "size": "",
                    "digest": "",
                    "type": "model",
                    "description": "",
                    "tags": [""],
                    "capabilities": ["completion"],
                    "parameters": "",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "",
                        "families": [""],
                        "parameter_size": "",
                        "quantization_level": "",
                    },
                }
                for i in ids
            ],
            "object": "list",
            "data": [
                {
                    "id": i,
                    "aliases": [i],
                    "tags": [],
                    "object": "model",
                    "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
                    "created": created,
                    "owned_by": "llamacpp",
                    "meta": {
                        "vocab_type": 2,
                        "n_vocab": 151936,
                        "n_ctx": 2048,
                        "n_ctx_train": 4096,
                        "n_embd": 64,
                        "n_params": 9855296,
                        "size": 19711232,
                        "ftype": "F16",
                    },
                }
                for i in ids
            ],
        }


class MlxFlavor(OpenAIFlavor):
    """mlx_lm.server (samples mlx-*.json / *.sse): Python json.dumps, keepalive comments."""

    name = "mlx"
    fingerprint = "0.32.2-0.32.4-Linux-6.18.44-fc-v669-x86_64-with-glibc2.36-x86_64"
    sse_content_type = "text/event-stream"
    preamble = (b": keepalive 0/1\n\n", b": keepalive 1/1\n\n")
    serves_unversioned_paths = True
    requires_model = False  # omitted model means the server's --model
    role_delta: ClassVar[dict[str, Any] | None] = None  # no role-only chunk: deltas repeat the role
    finish_delta: ClassVar[dict[str, Any]] = {"role": "assistant"}

    def encode(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()  # ", " / ": " separators and \uXXXX escapes, as mlx

    def chat_id(self) -> str:
        return f"chatcmpl-{uuid.uuid4()}"

    def text_id(self) -> str:
        return f"cmpl-{uuid.uuid4()}"

    def tool_call_id(self) -> str:
        return str(uuid.uuid4())

    def tool_arguments(self, arguments: str) -> str:
        try:  # mlx re-serializes the model's arguments: '{"city": "Paris"}'
            return json.dumps(json.loads(arguments))
        except ValueError:
            return arguments

    def usage(self, meta: Meta) -> dict[str, Any]:
        return {
            "prompt_tokens": meta.prompt_tokens,
            "completion_tokens": meta.completion_tokens,
            "total_tokens": meta.prompt_tokens + meta.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def _envelope(self, meta: Meta, obj: str) -> dict[str, Any]:
        return {
            "id": meta.id,
            "system_fingerprint": self.fingerprint,
            "object": obj,
            "model": meta.model,
            "created": meta.created,
        }

    def message(self, text: str, calls: list[ToolCall]) -> dict[str, Any]:
        if not calls:
            return {"role": "assistant", "content": text}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "function": {"name": c.name, "arguments": c.arguments},
                    "type": "function",
                    "id": c.id,
                }
                for c in calls
            ],
        }

    def chat_completion(self, meta: Meta, message: dict[str, Any], finish: str) -> dict[str, Any]:
        return {
            **self._envelope(meta, "chat.completion"),
            "choices": [{"index": 0, "finish_reason": finish, "message": message}],
            "usage": self.usage(meta),
        }

    def chat_chunk(self, meta: Meta, delta: Any, finish: str | None) -> dict[str, Any]:
        return {
            **self._envelope(meta, "chat.completion.chunk"),
            "choices": [{"index": 0, "finish_reason": finish, "delta": delta}],
        }

    def chat_usage_chunk(self, meta: Meta) -> dict[str, Any]:
        # mlx labels the usage chunk "chat.completion", not ".chunk"
        return {**self._envelope(meta, "chat.completion"), "choices": [], "usage": self.usage(meta)}

    def content_delta(self, piece: str) -> dict[str, Any]:
        return {"role": "assistant", "content": piece}

    def tool_deltas(self, calls: list[ToolCall]) -> list[bytes]:
        """mlx: every tool call, complete, in one delta."""
        return [
            self.encode(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "function": {"name": c.name, "arguments": c.arguments},
                            "type": "function",
                            "id": c.id,
                            "index": i,
                        }
                        for i, c in enumerate(calls)
                    ],
                }
            )
        ]

    def text_completion(self, meta: Meta, text: str, finish: str) -> dict[str, Any]:
        return {
            **self._envelope(meta, "text_completion"),
            "choices": [{"index": 0, "finish_reason": finish, "text": text}],
            "usage": self.usage(meta),
        }

    def text_chunk(self, meta: Meta, text: str, finish: str | None) -> dict[str, Any]:
        return {
            **self._envelope(meta, "text_completion"),
            "choices": [{"index": 0, "finish_reason": finish, "text": text}],
        }

    def text_usage_chunk(self, meta: Meta) -> dict[str, Any] | None:
        return {**self._envelope(meta, "text_completion"), "choices": [], "usage": self.usage(meta)}

    def error_object(self, status: int, message: str | None) -> Any:
        return {"error": message or self._error_fields(status)[0]}  # a plain string, not an object

    def models(self, ids: Iterable[str], created: int) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": created} for i in ids],
        }


FLAVORS: dict[str, type[OpenAIFlavor]] = {
    f.name: f for f in (OpenAIFlavor, LlamaCppFlavor, MlxFlavor)
}


# request helpers


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return prompt if isinstance(prompt, str) else ""


def _count_tokens(text_length: int) -> int:
    return 1 + text_length // 4  # ~4 characters a token; only needs to be deterministic


def _split(text: str, n: int) -> list[str]:
    """``text`` in exactly ``n`` contiguous pieces (some "" when the text is shorter)."""
    size = len(text)
    return [text[i * size // n : (i + 1) * size // n] for i in range(n)]


def _first_tool_name(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            return name
    return None


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _embedding_inputs(value: Any) -> list[str] | None:
    """The texts to embed; token arrays are embedded via their repr, which keeps them distinct."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [repr(value)]
        return [v if isinstance(v, str) else repr(v) for v in value]
    return None


def _embedding(text: str, dim: int, as_base64: bool) -> list[float] | str:
    """A deterministic unit vector per text, float32 like OpenAI's (so base64 round-trips)."""
    state = zlib.crc32(text.encode()) or 1
    values = []
    for _ in range(dim):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        values.append(state / 0x3FFFFFFF - 1.0)
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    vector = array.array("f", (v / norm for v in values))
    if not as_base64:
        return vector.tolist()
    if sys.byteorder == "big":
        vector.byteswap()  # the wire format is little-endian float32
    return base64.b64encode(vector.tobytes()).decode()


Handler = Callable[[web.BaseRequest, RecordedRequest], Awaitable[web.StreamResponse]]


class FakeOpenAI(LoopbackServer):
    """A scriptable OpenAI-compatible HTTP server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        flavor: str = "openai",
        host: str = "127.0.0.1",
        port: int = 0,
        stream_chunks: int = 20,
        first_byte_delay: float = 0.5,
        chunk_delay: float = 0.0,
        mid_stream_after: int = 3,
        retry_after: int = 1,
        models: Iterable[str] = (OK, TOOLS),
        model_alias: str | None = None,
        tool_calls: list[tuple[str, str]] | None = None,
        embedding_dim: int = 8,
        record: bool = True,
    ) -> None:
        self.host = host
        self.flavor = flavor
        self.stream_chunks = stream_chunks  # content deltas per streamed reply
        self.first_byte_delay = first_byte_delay  # seconds, for "slow-first-byte"
        self.chunk_delay = chunk_delay  # seconds before each SSE event, for every stream
        self.mid_stream_after = mid_stream_after  # SSE events sent before a *-mid-stream failure
        self.retry_after = retry_after  # Retry-After seconds on 429
        self.models = list(models)  # ids listed by GET /v1/models
        self.model_alias = (
            model_alias  # response "model" instead of the requested one (llama.cpp -a)
        )
        self.tool_calls = tool_calls  # (name, arguments JSON) for "tools"; None: the request's tool
        self.embedding_dim = embedding_dim  # unless the request sets "dimensions"
        self.record = record  # False: keep no RecordedRequest (long benchmark runs)
        self.requests: list[RecordedRequest] = []
        self.script: list[str] = []
        self.scenario: str | None = None
        self.healthy = True
        self.compress: str | None = None  # None, "honour", "gzip" or a label (module docstring)
        self.context_window = 128_000  # the M of "context-exceeded"
        self.reasoning: str | None = None  # reasoning_content of every chat reply (docstring)
        self._port = port
        self._runner: web.ServerRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # configuration

    @property
    def flavor(self) -> str:
        return self._fmt.name

    @flavor.setter
    def flavor(self, name: str) -> None:
        if name not in FLAVORS:
            raise ValueError(f"unknown flavor {name!r}; one of {sorted(FLAVORS)}")
        self._fmt = FLAVORS[name]()
        self._routes = self._build_routes()

    def _build_routes(self) -> dict[tuple[str, str], Handler]:
        posts: dict[str, Handler] = {
            "/chat/completions": self._chat,
            "/completions": self._completions,
            "/embeddings": self._embeddings,
        }
        gets: dict[str, Handler] = {"/models": self._list_models}
        prefixes = ("/v1", "") if self._fmt.serves_unversioned_paths else ("/v1",)
        routes: dict[tuple[str, str], Handler] = {("GET", "/health"): self._health}
        for prefix in prefixes:
            routes.update({("POST", prefix + p): h for p, h in posts.items()})
            routes.update({("GET", prefix + p): h for p, h in gets.items()})
        return routes

    @property
    def port(self) -> int:
        return self._port

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` (where /health lives)."""
        return f"http://{self.host}:{self._port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL: ``http://127.0.0.1:PORT/v1``."""
        return self.origin + "/v1"

    # scripting

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Make the next ``n`` POST requests fail with ``status`` (ahead of anything scripted)."""
        scenario = f"error-{status}"
        if error_status(scenario) is None:
            raise ValueError(f"status must be 400..599, got {status}")
        self.script[:0] = [scenario] * n

    def reset(self) -> None:
        """Forget recorded requests and runtime scripting (script, scenario, healthy)."""
        self.requests.clear()
        self.script.clear()
        self.scenario = None
        self.healthy = True

    def _pick_scenario(self, model: Any) -> str:
        if self.script:
            return self.script.pop(0)
        if self.scenario is not None:
            return self.scenario
        return model if isinstance(model, str) and is_scenario(model) else OK

    # lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeOpenAI already started")
        self._stopping = asyncio.Event()
        self._runner, self._port = await serve(self._handle, self.host, self._port)

    async def stop(self) -> None:
        if self._runner is None:
            return
        assert self._stopping is not None
        self._stopping.set()  # releases "hang"/"stall" handlers, which then drop their connection
        runner, self._runner = self._runner, None
        await runner.cleanup()

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Serve from a private event loop in a daemon thread, for sync tests and clients."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._thread_loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="FakeOpenAI", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError("FakeOpenAI thread did not start")
        if failure:
            raise failure[0]

    def stop_in_thread(self, timeout: float = 10.0) -> None:
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._thread_loop = None

    def __enter__(self) -> FakeOpenAI:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_in_thread()

    # request handling

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # content.read() rather than request.read(): no 1 MiB client_max_size cap on bodies.
        raw = await request.content.read() if request.body_exists else b""
        headers = {k.lower(): v for k, v in request.headers.items()} if self.record else {}
        rec = RecordedRequest(
            request.method, request.path, headers, _decode(raw), raw, time.monotonic()
        )
        if self.record:
            self.requests.append(rec)
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return self._error(404, f"Invalid URL ({request.method} {request.path})")
        return await handler(request, rec)

    async def _before_reply(
        self, request: web.BaseRequest, rec: RecordedRequest
    ) -> web.StreamResponse | None:
        """Validate, pick the scenario and play its pre-response part; a response ends the request."""
        body = rec.body
        if not isinstance(body, dict):
            return self._error(400, _BAD_JSON)
        if self._fmt.requires_model and not body.get("model"):
            return self._error(400, "you must provide a model parameter")
        scenario = rec.scenario = self._pick_scenario(body.get("model"))
        if not is_scenario(scenario):
            return self._error(500, f"fake upstream: unknown scenario {scenario!r}")
        status = error_status(scenario)
        if status is not None:
            return self._error(status)
        if scenario == CONTEXT_EXCEEDED:
            return self._context_exceeded(len(rec.raw))
        if scenario == HANG:
            await self._until_stopped()
            return self._drop(request, web.Response())
        if scenario == SLOW_FIRST_BYTE:
            await asyncio.sleep(self.first_byte_delay)
        return None

    def _meta(
        self, id_: str, body: dict[str, Any], prompt_tokens: int, completion_tokens: int
    ) -> Meta:
        model = self.model_alias or body.get("model") or "default_model"
        include_usage = body.get("stream") is True and _include_usage(body)
        return Meta(
            id_, int(time.time()), str(model), prompt_tokens, completion_tokens, include_usage
        )

    def _pieces(self, text: str, body: dict[str, Any]) -> tuple[list[str], str]:
        """The reply's content deltas and finish_reason, honouring max_tokens like an engine."""
        pieces = _split(text, max(1, self.stream_chunks))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(pieces):
            return pieces[:limit], "length"
        return pieces, "stop"

    def _tool_calls(self, body: dict[str, Any]) -> list[ToolCall]:
        specs = self.tool_calls or [(_first_tool_name(body) or "get_weather", '{"city":"Paris"}')]
        fmt = self._fmt
        return [
            ToolCall(fmt.tool_call_id(), name, fmt.tool_arguments(args)) for name, args in specs
        ]

    async def _chat(self, request: web.BaseRequest, rec: RecordedRequest) -> web.StreamResponse:
        early = await self._before_reply(request, rec)
        if early is not None:
            return early
        body, fmt = rec.body, self._fmt
        messages = body.get("messages")
        if not isinstance(messages, list):
            return self._error(400, "Missing required parameter: 'messages'.")
        prompt_tokens = _count_tokens(
            sum(len(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
        )
        calls: list[ToolCall] = []
        pieces: list[str] = []
        if rec.scenario == TOOLS:
            calls, finish = self._tool_calls(body), "tool_calls"
            completion_tokens = sum(len(_fragments(c.arguments)) + 1 for c in calls)
        else:
            pieces, finish = self._pieces("echo: " + _last_user_text(messages), body)
            completion_tokens = len(pieces)
        thought = _split(self.reasoning, max(1, self.stream_chunks)) if self.reasoning else []
        completion_tokens += len(thought)
        meta = self._meta(fmt.chat_id(), body, prompt_tokens, completion_tokens)
        if body.get("stream") is True:
            deltas = fmt.tool_deltas(calls) if calls else fmt.text_deltas(pieces)
            thinking = [fmt.encode({"reasoning_content": p}) for p in thought if p]
            role = deltas[:1] if deltas and deltas[0] is fmt._role_delta else []
            events = fmt.chat_events(meta, [*role, *thinking, *deltas[len(role) :]], finish)
            return await self._stream(request, rec.scenario, events)
        message = fmt.message("".join(pieces), calls)
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        reply = fmt.chat_completion(meta, message, finish)
        return await self._json(request, rec.scenario, reply)

    async def _completions(
        self, request: web.BaseRequest, rec: RecordedRequest
    ) -> web.StreamResponse:
        early = await self._before_reply(request, rec)
        if early is not None:
            return early
        body, fmt = rec.body, self._fmt
        prompt = _prompt_text(body.get("prompt"))
        pieces, finish = self._pieces("echo: " + prompt, body)
        meta = self._meta(fmt.text_id(), body, _count_tokens(len(prompt)), len(pieces))
        if body.get("stream") is True:
            return await self._stream(request, rec.scenario, fmt.text_events(meta, pieces, finish))
        return await self._json(
            request, rec.scenario, fmt.text_completion(meta, "".join(pieces), finish)
        )

    async def _embeddings(
        self, request: web.BaseRequest, rec: RecordedRequest
    ) -> web.StreamResponse:
        early = await self._before_reply(request, rec)
        if early is not None:
            return early
        body = rec.body
        texts = _embedding_inputs(body.get("input"))
        if texts is None:
            return self._error(400, "'input' is a required property")
        dim = body.get("dimensions")
        dim = dim if isinstance(dim, int) and dim > 0 else self.embedding_dim
        as_base64 = body.get("encoding_format") == "base64"
        tokens = sum(_count_tokens(len(t)) for t in texts)
        reply = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _embedding(t, dim, as_base64)}
                for i, t in enumerate(texts)
            ],
            "model": self.model_alias or body.get("model") or "default_model",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return await self._json(request, rec.scenario, reply)

    async def _list_models(
        self, request: web.BaseRequest, rec: RecordedRequest
    ) -> web.StreamResponse:
        body = self._fmt.encode(self._fmt.models(self.models, int(time.time())))
        return web.Response(body=body, headers=self._fmt.json_headers)

    async def _health(self, request: web.BaseRequest, rec: RecordedRequest) -> web.StreamResponse:
        if self.healthy:
            return web.Response(body=self._fmt.health_ok, headers=self._fmt.json_headers)
        # what llama-server answers while it loads its model
        unavailable = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
        return web.Response(status=503, body=unavailable, headers=self._fmt.json_headers)

    # response writing

    def _context_exceeded(self, body_bytes: int) -> web.Response:
        limit = self.context_window
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {limit + 1 + body_bytes // 4} tokens. Please reduce the length of the messages."
        )
        error = {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
        return web.Response(
            status=400, body=self._fmt.encode({"error": error}), headers=self._fmt.json_headers
        )

    def _error(self, status: int, message: str | None = None) -> web.Response:
        headers = self._fmt.json_headers
        if status == 429:
            headers = {**headers, "Retry-After": str(self.retry_after)}
        return web.Response(
            status=status, body=self._fmt.error_body(status, message), headers=headers
        )

    async def _json(
        self, request: web.BaseRequest, scenario: str | None, obj: Any
    ) -> web.StreamResponse:
        body = self._fmt.encode(obj)
        if scenario not in MID_STREAM:
            return self._compressed(web.Response(body=body, headers=self._fmt.json_headers))
        # A non-stream reply broken halfway: the promised Content-Length never arrives.
        resp = web.StreamResponse(headers=self._fmt.json_headers)
        resp.content_length = len(body)
        try:
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            if scenario == STALL_MID_STREAM:
                await self._until_stopped()
        except ConnectionError:
            return resp  # the client hung up first
        return self._drop(request, resp)

    async def _stream(
        self, request: web.BaseRequest, scenario: str | None, events: list[bytes]
    ) -> web.StreamResponse:
        resp = self._compressed(web.StreamResponse(headers=self._fmt.sse_headers))
        try:
            await resp.prepare(request)
            await self._write_events(request, resp, scenario, events)
        except ConnectionError:
            pass  # the client hung up mid-stream (a benchmark ending, a timeout test): not an error
        return resp

    async def _write_events(
        self,
        request: web.BaseRequest,
        resp: web.StreamResponse,
        scenario: str | None,
        events: list[bytes],
    ) -> None:
        broken = scenario in MID_STREAM
        if broken:
            events = events[: self.mid_stream_after]
        delay = self.chunk_delay
        for event in events:  # one write, hence one HTTP chunk, per SSE event, like real servers
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(event)
        if scenario == ERROR_MID_STREAM:
            await resp.write(self._fmt.stream_error_event())  # then aiohttp ends the body cleanly
        elif broken:
            if scenario == STALL_MID_STREAM:
                await self._until_stopped()
            self._drop(request, resp)

    def _compressed(self, resp: web.StreamResponse) -> web.StreamResponse:
        if self.compress == "honour":
            resp.enable_compression()  # aiohttp picks a coding from the request's Accept-Encoding
        elif self.compress == "gzip":
            resp.enable_compression(force=web.ContentCoding.gzip)
        elif self.compress is not None:
            resp.headers["Content-Encoding"] = self.compress
        return resp

    async def _until_stopped(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()

    @staticmethod
    def _drop(request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
        # close() flushes what was written, then FIN: the client sees a truncated body. aiohttp's
        # later write_eof() on the closed transport raises ConnectionError, which it swallows.
        transport = request.transport
        if transport is not None:
            transport.close()
        return resp


# standalone entry point (benchmarks)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openai_upstream", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--flavor", choices=sorted(FLAVORS), default="openai")
    parser.add_argument("--chunks", type=int, default=20, help="content deltas per streamed reply")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="seconds before each SSE event"
    )
    parser.add_argument(
        "--first-byte-delay", type=float, default=0.5, help="for model slow-first-byte"
    )
    return parser.parse_args(argv)


async def _serve(fake: FakeOpenAI) -> None:
    await fake.start()
    print(f"fake OpenAI upstream ({fake.flavor}) listening on {fake.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    fake = FakeOpenAI(
        flavor=args.flavor,
        host=args.host,
        port=args.port,
        stream_chunks=args.chunks,
        chunk_delay=args.chunk_delay,
        first_byte_delay=args.first_byte_delay,
        record=False,  # nobody can read the records of a standalone server; keep memory flat
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(fake))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(fake))


if __name__ == "__main__":
    main()
