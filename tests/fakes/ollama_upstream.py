"""A fake Ollama: a real aiohttp HTTP server on a loopback port speaking Ollama's native API.

Everything on the wire follows docs/api.md of ollama/ollama: field names and their order, JSON
replies as ``application/json; charset=utf-8``, streams as ``application/x-ndjson`` with one JSON
object per line (one write per line), the final ``done: true`` line with ``done_reason`` and the
durations and counters, tool calls with ``function.arguments`` as an object, and errors as
``{"error": "<string>"}``.

Usage::

    async with FakeOllama() as ollama:
        ollama.reply = "Hello!"                       # or: ollama.tool_calls = [("f", {"a": 1})]
        ... POST f"{ollama.url}/api/chat" ...
        assert ollama.requests[-1].body["messages"] == [...]

Endpoints: ``POST /api/chat``, ``/api/generate``, ``/api/embed``; ``GET /api/ps``, ``/api/tags``,
``/api/version``. Other paths get gin's ``404 page not found``. Every request is recorded.

Scripting (plain attributes; ``reset()`` restores the defaults)
----------------------------------------------------------------
``models``          Names Ollama has (``llama3.2`` means ``llama3.2:latest``). Any other model
                    answers 404 ``model '<name>' not found``.
``reply``           The assistant's text; None: ``"echo: <last user message>"`` (generate:
                    ``"echo: <prompt>"``). Streamed as ``stream_chunks`` content lines.
                    ``options.num_predict`` below that count cuts it, ``done_reason: "length"``.
``tool_calls``      ``[(name, arguments_dict), ...]``: a chat request that offers ``tools`` gets
                    these calls (with ``id`` ``call_xxxxxxxx`` and ``function.index``) instead
                    of text, all in one message, as Ollama sends them.
``fail_status``     Every POST answers this status with ``{"error": fail_message}``.
``error_after``     A stream sends this many lines, then ``{"error": ...}``, and ends.
``unload_delay``    Seconds an unloaded model stays in ``/api/ps`` (Ollama frees memory in the
                    background after it answers an unload).
``version``, ``embedding_dim``, ``line_delay`` (seconds before each streamed line).

Loaded models, like Ollama's scheduler: chat, generate and embed load their model for
``keep_alive`` (default ``5m``; a Go duration or seconds; ``0`` unloads after the reply; negative
keeps it for ever). A chat with no messages or a generate with no prompt only loads (``done_reason:
"load"``); with ``keep_alive: 0`` it unloads (``"unload"``). ``/api/ps`` lists what is loaded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import random
import re
import string
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiohttp import web

from tests.fakes.server import LoopbackServer, serve

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
DEFAULT_KEEP_ALIVE = 300.0
RUNNER_ERROR = "an error was encountered while running the model"
# Go's time.ParseDuration units, in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_encode = msgspec.json.Encoder().encode
_rng = random.Random()


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake received it. ``headers`` keys are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None (no body / invalid JSON; see ``raw``)
    raw: bytes
    received_at: float  # time.monotonic()


class _Rejected(Exception):
    """A request Ollama would refuse: status and message of its ``{"error": ...}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def tagged(name: str) -> str:
    """Ollama's full name: ``llama3.2`` is ``llama3.2:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def keep_alive_seconds(value: Any) -> float:
    """Ollama's ``keep_alive``: seconds (number) or a Go duration string; negative: for ever."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Rejected(400, "json: cannot unmarshal keep_alive")
    if not isinstance(value, str):
        return math.inf if value < 0 else float(value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body in ("0", ""):
        return 0.0
    if re.fullmatch(r"\d+", body):
        return math.inf if sign < 0 else float(body)
    if not re.fullmatch(f"(?:{_DURATION.pattern})+", body):
        raise _Rejected(400, f'time: invalid duration "{value}"')
    seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(body))
    return math.inf if sign < 0 else seconds


def go_time(moment: datetime) -> str:
    """RFC 3339 with nanoseconds, as Go's encoding/json writes ``time.Time``."""
    nanos = f"{moment.microsecond:06d}{_rng.randrange(1000):03d}".rstrip("0") or "0"
    offset = moment.strftime("%z")
    zone = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos}{zone}"


def _now() -> str:
    return go_time(datetime.now(UTC))


def _split(text: str, n: int) -> list[str]:
    """``text`` as ``n`` consecutive pieces (at least one character each when possible)."""
    n = max(1, min(n, len(text) or 1))
    step, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + step + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _vector(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text`` (Ollama's embeddings are L2-normalised)."""
    seed = hashlib.sha256(text.encode()).digest()
    rng = random.Random(seed)
    raw = [rng.uniform(-1, 1) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    # Ollama computes in float32: values carry float32 precision on the wire.
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]


def _model_size(name: str) -> int:
    return 500_000_000 + int(hashlib.sha256(name.encode()).hexdigest()[:6], 16) * 100


def _details(name: str) -> dict[str, Any]:
    family = name.split(":")[0].split("/")[-1].rstrip(".0123456789") or "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    }


def _metrics(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "total_duration": 180_000_000 + completion_tokens * 8_000_000,
        "load_duration": 41_295_167,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": 24_573_166,
        "eval_count": completion_tokens,
        "eval_duration": completion_tokens * 8_000_000,
    }


def _call_id() -> str:
    return "call_" + "".join(_rng.choices(string.ascii_lowercase + string.digits, k=8))


class FakeOllama(LoopbackServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._runner: web.ServerRunner | None = None
        self.requests: list[RecordedRequest] = []
        # model → time.monotonic() at which it unloads (math.inf: never)
        self.loaded: dict[str, float] = {}
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest, Any], Any]] = {
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/generate"): self._generate,
            ("POST", "/api/embed"): self._embed,
            ("GET", "/api/ps"): self._ps,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/version"): self._version,
        }
        self.reset()

    def reset(self) -> None:
        """Forget requests and loaded models; restore every scripting attribute's default."""
        self.requests.clear()
        self.loaded.clear()
        self.models: list[str] = ["llama3.2", "llava", "all-minilm"]
        self.reply: str | None = None
        self.tool_calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_status: int | None = None
        self.fail_message = "llama runner process has terminated: exit status 2"
        self.error_after: int | None = None
        self.stream_chunks = 4
        self.unload_delay = 0.0
        self.line_delay = 0.0
        self.version = "0.12.6"
        self.embedding_dim = 8

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    def posts(self, path: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and path in (None, r.path)]

    def loaded_names(self) -> list[str]:
        now = time.monotonic()
        return sorted(name for name, until in self.loaded.items() if until > now)

    # lifecycle

    async def start(self) -> None:
        self._runner, self._port = await serve(self._handle, self.host, self._port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # request handling

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await request.content.read() if request.body_exists else b""
        try:
            body = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(
            RecordedRequest(request.method, request.path, headers, body, raw, time.monotonic())
        )
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return web.Response(status=404, text="404 page not found")
        try:
            if request.method == "POST":
                body = self._checked(raw, body)
            response: web.StreamResponse = await handler(request, body)
            return response
        except _Rejected as exc:
            return _error(exc.status, exc.message)

    def _checked(self, raw: bytes, body: Any) -> dict[str, Any]:
        """What every POST handler of Ollama does first: parse, scripted failure, find the model."""
        if not raw:
            raise _Rejected(400, "missing request body")
        if not isinstance(body, dict):
            raise _Rejected(400, "invalid character in request body")
        if self.fail_status is not None:
            raise _Rejected(self.fail_status, self.fail_message)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Rejected(400, "model is required")
        if tagged(model) not in {tagged(m) for m in self.models}:
            raise _Rejected(404, f"model '{model}' not found")
        return body

    def _schedule(self, body: dict[str, Any]) -> float:
        """Load the request's model for its keep_alive; returns that keep_alive in seconds."""
        seconds = keep_alive_seconds(body.get("keep_alive"))
        self.loaded[tagged(body["model"])] = time.monotonic() + seconds
        return seconds

    def _expire(self, model: str) -> None:
        # Ollama answers an unload at once and frees the memory in the background.
        self.loaded[tagged(model)] = time.monotonic() + self.unload_delay

    def _management(
        self, body: dict[str, Any], empty: bool, shape: dict[str, Any]
    ) -> web.Response | None:
        """Load / unload requests (no messages or no prompt): one JSON object, never a stream."""
        if not empty:
            return None
        if keep_alive_seconds(body.get("keep_alive")) == 0:
            self._expire(body["model"])
            reason = "unload"
        else:
            self._schedule(body)
            reason = "load"
        reply = {"model": body["model"], "created_at": _now(), **shape, "done": True}
        reply["done_reason"] = reason
        return _json(reply)

    async def _chat(self, request: web.BaseRequest, body: dict[str, Any]) -> web.StreamResponse:
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise _Rejected(400, "json: cannot unmarshal messages into []api.Message")
        _validate_messages(messages)
        empty_message = {"message": {"role": "assistant", "content": ""}}
        early = self._management(body, not messages, empty_message)
        if early is not None:
            return early
        keep = self._schedule(body)
        prompt_tokens = sum(_tokens(str(m.get("content") or "")) for m in messages)
        if self.tool_calls and body.get("tools"):
            lines = [_message_line(body, "", self._calls())]
            completion_tokens, reason = 12, "stop"
        else:
            pieces, reason = self._pieces(_last_user_text(messages), body)
            lines = [_message_line(body, p) for p in pieces]
            completion_tokens = len(pieces)
        final = _message_line(body, "", done=reason)
        final.update(_metrics(prompt_tokens, completion_tokens))
        response = await self._answer(request, body, lines, final, _merge_messages)
        self._after(body, keep)
        return response

    async def _generate(self, request: web.BaseRequest, body: dict[str, Any]) -> web.StreamResponse:
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise _Rejected(400, "json: cannot unmarshal prompt into string")
        _validate_images(body.get("images"), "images")
        early = self._management(body, not prompt, {"response": ""})
        if early is not None:
            return early
        keep = self._schedule(body)
        pieces, reason = self._pieces(prompt, body)
        lines = [_text_line(body, p) for p in pieces]
        final = _text_line(body, "", done=reason)
        if body.get("raw") is not True:
            final["context"] = [1, 2, 3]  # raw mode returns no context, per the docs
        final.update(_metrics(_tokens(prompt), len(pieces)))
        response = await self._answer(request, body, lines, final, _merge_texts)
        self._after(body, keep)
        return response

    async def _embed(self, request: web.BaseRequest, body: dict[str, Any]) -> web.StreamResponse:
        value = body.get("input")
        texts = [value] if isinstance(value, str) and value else value
        if texts is None or texts == "":
            texts = []
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _Rejected(400, "invalid input type")
        keep = self._schedule(body)
        dim = body.get("dimensions")
        dim = dim if isinstance(dim, int) and dim > 0 else self.embedding_dim
        reply: dict[str, Any] = {
            "model": body["model"],
            "embeddings": [_vector(t, dim) for t in texts],
        }
        if texts:
            reply["total_duration"] = 14_143_917
            reply["load_duration"] = 1_019_500
            reply["prompt_eval_count"] = sum(_tokens(t) for t in texts)
        self._after(body, keep)
        return _json(reply)

    async def _ps(self, request: web.BaseRequest, body: Any) -> web.StreamResponse:
        now_mono, now = time.monotonic(), datetime.now().astimezone()
        models = []
        for name in self.loaded_names():
            left = self.loaded[name] - now_mono
            expires = now + (
                timedelta(days=365 * 290) if math.isinf(left) else timedelta(seconds=left)
            )
            size = _model_size(name)
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": size,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": _details(name),
                    "expires_at": go_time(expires),
                    "size_vram": size,
                    "context_length": 4096,
                }
            )
        return _json({"models": models})

    async def _tags(self, request: web.BaseRequest, body: Any) -> web.StreamResponse:
        models = [
            {
                "name": tagged(m),
                "model": tagged(m),
                "modified_at": go_time(datetime.now().astimezone()),
                "size": _model_size(tagged(m)),
                "digest": hashlib.sha256(tagged(m).encode()).hexdigest(),
                "details": _details(m),
            }
            for m in self.models
        ]
        return _json({"models": models})

    async def _version(self, request: web.BaseRequest, body: Any) -> web.StreamResponse:
        return _json({"version": self.version})

    # reply building

    def _calls(self) -> list[dict[str, Any]]:
        return [
            {"id": _call_id(), "function": {"index": i, "name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(self.tool_calls)
        ]

    def _pieces(self, prompt_text: str, body: dict[str, Any]) -> tuple[list[str], str]:
        text = self.reply if self.reply is not None else "echo: " + prompt_text
        pieces = _split(text, self.stream_chunks)
        options = body.get("options") or {}
        limit = options.get("num_predict") if isinstance(options, dict) else None
        if isinstance(limit, int) and 0 < limit < len(pieces):
            return pieces[:limit], "length"
        return pieces, "stop"

    def _after(self, body: dict[str, Any], keep: float) -> None:
        if keep == 0:  # keep_alive 0 on a real request: unload once it is answered
            self._expire(body["model"])

    async def _answer(
        self,
        request: web.BaseRequest,
        body: dict[str, Any],
        lines: list[dict[str, Any]],
        final: dict[str, Any],
        merge: Callable[[list[dict[str, Any]], dict[str, Any]], dict[str, Any]],
    ) -> web.StreamResponse:
        if body.get("stream") is False:  # Ollama streams unless told not to
            return _json(merge(lines, final))
        response = web.StreamResponse(headers={"Content-Type": NDJSON_TYPE})
        await response.prepare(request)
        try:
            for i, line in enumerate([*lines, final]):
                if self.error_after is not None and i == self.error_after:
                    await response.write(_encode({"error": RUNNER_ERROR}) + b"\n")
                    break
                if self.line_delay:
                    await asyncio.sleep(self.line_delay)
                await response.write(_encode(line) + b"\n")
        except ConnectionError:
            pass  # the client hung up mid-stream
        return response


def _message_line(
    body: dict[str, Any],
    content: str,
    tool_calls: list[dict[str, Any]] | None = None,
    done: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    line = {
        "model": body["model"],
        "created_at": _now(),
        "message": message,
        "done": done is not None,
    }
    if done is not None:
        line["done_reason"] = done
    return line


def _text_line(body: dict[str, Any], text: str, done: str | None = None) -> dict[str, Any]:
    line = {
        "model": body["model"],
        "created_at": _now(),
        "response": text,
        "done": done is not None,
    }
    if done is not None:
        line["done_reason"] = done
    return line


def _merge_messages(lines: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed reply: the final line carrying the whole message."""
    merged = dict(final)
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    for line in lines:
        message["content"] += line["message"]["content"]
        if "tool_calls" in line["message"]:
            message.setdefault("tool_calls", []).extend(line["message"]["tool_calls"])
    merged["message"] = message
    return merged


def _merge_texts(lines: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, Any]:
    merged = dict(final)
    merged["response"] = "".join(line["response"] for line in lines)
    return merged


def _validate_messages(messages: list[Any]) -> None:
    """The shape checks Go's JSON decoding of ``[]api.Message`` would fail on."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _Rejected(400, f"json: cannot unmarshal messages[{i}] into api.Message")
        if not isinstance(message.get("content", ""), str):
            raise _Rejected(
                400,
                "json: cannot unmarshal array into Go struct field Message.messages.content of type string",
            )
        _validate_images(message.get("images"), f"messages[{i}].images")
        for call in message.get("tool_calls") or ():
            arguments = (
                call.get("function", {}).get("arguments") if isinstance(call, dict) else None
            )
            if arguments is not None and not isinstance(arguments, dict):
                raise _Rejected(
                    400,
                    "json: cannot unmarshal string into Go struct field ToolCallFunction.messages.tool_calls.function.arguments of type map[string]interface {}",
                )


def _validate_images(images: Any, where: str) -> None:
    for image in images or ():
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _Rejected(400, f"illegal base64 data in {where}") from None


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(obj), headers={"Content-Type": JSON_TYPE})


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)
