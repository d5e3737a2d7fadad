"""Ollama through its native API (``/api/chat``, ``/api/generate``, ``/api/embed``), shown as OpenAI.

Native rather than Ollama's own ``/v1`` mount because model management lives there
(``keep_alive``, load and unload, ``/api/ps``) and so do Ollama-only options and base64 images.
The price is a translation both ways, kept in pure functions below:

- Tool-call arguments are a JSON *string* in OpenAI and a JSON *object* in Ollama; a tool result
  names its tool (``tool_name``), which OpenAI leaves implicit in ``tool_call_id``.
- Sampling settings move into ``options``; ``max_tokens`` is ``num_predict``; ``response_format``
  is ``format`` (``"json"`` or the schema itself).
- Streams are NDJSON, one JSON object per line, ending with a ``done: true`` line that carries the
  token counts. Each tool call arrives whole in one line and becomes one ``delta.tool_calls``
  entry with complete arguments, never content.
- Errors are ``{"error": "<string>"}``, with an HTTP status, or as a line in the middle of a stream.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import aiohttp
import msgspec

from adapters.base import AdapterRegistry, Operation, Probe, UpstreamReply, UpstreamRequest
from adapters.openai_compat import mapped_client_errors, whole_answer_timeout
from adapters.streams import Framer, StreamDeadlines, refuse_unknown_encoding
from gateway.config import Provider, Timeouts
from gateway.errors import (
    BadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
)

KeepAlive = str | int
T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_DONE_EVENT = b"data: [DONE]\n\n"
# OpenAI sampling fields Ollama reads, under the same names, from ``options``.
_OPTIONS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One model Ollama holds in memory (``GET /api/ps``)."""

    name: str  # as Ollama lists it: with its tag, e.g. "llama3.2:latest"
    size: int  # bytes in memory, VRAM included
    size_vram: int  # bytes of ``size`` in GPU memory
    expires_at: datetime | None  # when Ollama unloads it if idle; None if it did not say


# --- Ollama's replies, decoded typed (fields we do not read are skipped, not built) ----------


class _Function(msgspec.Struct):
    name: str = ""
    arguments: dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    function: _Function
    id: str = ""


class _Message(msgspec.Struct):
    content: str = ""
    thinking: str = ""
    tool_calls: list[_ToolCall] | None = None


class _Reply(msgspec.Struct):
    """One ``/api/chat`` or ``/api/generate`` answer: a whole reply or one stream line."""

    message: _Message | None = None  # chat
    response: str = ""  # generate
    thinking: str = ""  # generate
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0
    logprobs: list[dict[str, Any]] | None = None
    error: str | None = None


class _Embeddings(msgspec.Struct):
    embeddings: list[list[float]] = []
    prompt_eval_count: int = 0
    error: str | None = None


class _Running(msgspec.Struct):
    name: str
    size: int = 0
    size_vram: int = 0
    expires_at: datetime | None = None
    # The context the model was loaded with (num_ctx), not the one it was trained for.
    context_length: int = 0


class _RunningList(msgspec.Struct):
    models: list[_Running] | None = None


class _Version(msgspec.Struct):
    version: str = "?"


_REPLY = msgspec.json.Decoder(_Reply)
_EMBEDDINGS = msgspec.json.Decoder(_Embeddings)
_RUNNING = msgspec.json.Decoder(_RunningList)
_VERSION = msgspec.json.Decoder(_Version)


# --- OpenAI's requests, decoded typed where the gateway did not already check them -----------


class _InFunctionCall(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any] = ""


class _InToolCall(msgspec.Struct):
    function: _InFunctionCall
    id: str = ""


class _InMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[_InToolCall] | None = None
    tool_call_id: str | None = None


_MESSAGES = msgspec.json.Decoder(list[_InMessage])


# --- requests: OpenAI → Ollama (pure; raise only BadRequest) ---------------------------------


def chat_body(
    fields: dict[str, msgspec.Raw], model: str, stream: bool, keep_alive: KeepAlive | None
) -> dict[str, Any]:
    """The ``/api/chat`` body for an OpenAI chat request."""
    _single_choice(fields)
    try:
        messages = _MESSAGES.decode(fields.get("messages", b"[]"))
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid messages: {exc}", param="messages") from None
    if not messages:
        # Ollama reads an empty chat as "load the model" (or, with keep_alive 0, "unload it").
        raise BadRequest("messages: expected at least one message", param="messages")
    body: dict[str, Any] = {"model": model, "messages": ollama_messages(messages), "stream": stream}
    tools = ollama_tools(_field(fields, "tools"), _field(fields, "tool_choice"))
    if tools:
        body["tools"] = tools
    fmt = ollama_format(_field(fields, "response_format"))
    if fmt is not None:
        body["format"] = fmt
    think = _think(_field(fields, "reasoning_effort"))
    if think is not None:
        body["think"] = think
    if _field(fields, "logprobs") is True:
        body["logprobs"] = True
        top = _field(fields, "top_logprobs")
        if isinstance(top, int):
            body["top_logprobs"] = top
    return _finish_body(body, fields, keep_alive)


def generate_body(
    fields: dict[str, msgspec.Raw], model: str, stream: bool, keep_alive: KeepAlive | None
) -> dict[str, Any]:
    """The ``/api/generate`` body for an OpenAI (legacy) completions request."""
    _single_choice(fields)
    if _field(fields, "echo") is True:
        raise BadRequest("echo is not supported by Ollama", param="echo")
    suffix = _field(fields, "suffix")
    # OpenAI completions continue the prompt as given; Ollama would wrap it in the chat
    # template unless raw. A suffix needs the template (fill-in-the-middle), so not raw then.
    body: dict[str, Any] = {"model": model, "prompt": _prompt(_field(fields, "prompt"))}
    body["raw"] = not isinstance(suffix, str) or not suffix
    if isinstance(suffix, str) and suffix:
        body["suffix"] = suffix
    body["stream"] = stream
    return _finish_body(body, fields, keep_alive)


def embed_body(fields: dict[str, msgspec.Raw], model: str) -> dict[str, Any]:
    """The ``/api/embed`` body for an OpenAI embeddings request."""
    value = _field(fields, "input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BadRequest(
            "input: Ollama embeds a string or a non-empty list of strings (not token ids)",
            param="input",
        )
    body: dict[str, Any] = {"model": model, "input": value}
    dimensions = _field(fields, "dimensions")
    if isinstance(dimensions, int):
        body["dimensions"] = dimensions
    return body


def ollama_messages(messages: list[_InMessage]) -> list[dict[str, Any]]:
    """OpenAI chat messages as Ollama's; tool results learn their tool's name from history."""
    names: dict[str, str] = {}  # tool_call_id → function name, from earlier assistant turns
    out = []
    for i, message in enumerate(messages):
        for call in message.tool_calls or ():
            if call.id:
                names[call.id] = call.function.name
        out.append(_message(message, names, f"messages[{i}]"))
    return out


def _message(message: _InMessage, names: dict[str, str], where: str) -> dict[str, Any]:
    role = message.role
    if role == "developer":  # OpenAI's newer name for system
        role = "system"
    if role not in ("system", "user", "assistant", "tool", "function"):
        raise BadRequest(f"{where}.role: unknown role {role!r}", param=f"{where}.role")
    text, images = _content(message.content, f"{where}.content")
    out: dict[str, Any] = {"role": "tool" if role == "function" else role, "content": text}
    if images:
        out["images"] = images
    if message.tool_calls and role == "assistant":
        out["tool_calls"] = [
            _ollama_call(call, f"{where}.tool_calls[{j}]")
            for j, call in enumerate(message.tool_calls)
        ]
    if out["role"] == "tool":
        call_id = message.tool_call_id
        name = message.name or (names.get(call_id) if call_id else None)
        if name:
            out["tool_name"] = name
        if call_id:
            out["tool_call_id"] = call_id
    return out


def _ollama_call(call: _InToolCall, where: str) -> dict[str, Any]:
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = _decode(arguments) if arguments.strip() else {}
        except msgspec.DecodeError:
            raise BadRequest(
                f"{where}.function.arguments: not valid JSON", param=f"{where}.function.arguments"
            ) from None
    if not isinstance(arguments, dict):
        raise BadRequest(
            f"{where}.function.arguments: expected a JSON object",
            param=f"{where}.function.arguments",
        )
    out: dict[str, Any] = {"function": {"name": call.function.name, "arguments": arguments}}
    if call.id:
        out["id"] = call.id
    return out


def _content(content: str | list[dict[str, Any]] | None, where: str) -> tuple[str, list[str]]:
    """A message's text, and its images as bare base64 (Ollama takes no data: URLs)."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image(part.get("image_url"), f"{where}[{j}].image_url"))
        else:
            raise BadRequest(f"{where}[{j}]: unsupported content part {kind!r}", param=where)
    return "\n".join(texts), images


def _image(value: Any, where: str) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url.startswith("data:"):
        # Fetching URLs on the client's behalf would make the gateway an open proxy.
        raise BadRequest(f"{where}: Ollama takes images as data: URLs only", param=where)
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise BadRequest(f"{where}: expected a base64 data: URL", param=where)
    return data


def ollama_tools(tools: Any, tool_choice: Any) -> list[dict[str, Any]]:
    """OpenAI function tools as Ollama's. Ollama cannot force a call; choices narrow the list."""
    if not tools or tool_choice == "none":
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools: expected a list", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}]: expected an object", param="tools")
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise BadRequest(f"tools[{i}]: Ollama supports function tools only", param="tools")
        # Only what Ollama's tool definition has (OpenAI's ``strict`` has no equivalent).
        kept = {k: function[k] for k in ("name", "description", "parameters") if k in function}
        out.append({"type": "function", "function": kept})
    chosen = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    wanted = chosen.get("name") if isinstance(chosen, dict) else None
    if wanted:
        out = [t for t in out if t["function"].get("name") == wanted]
    return out


def ollama_format(response_format: Any) -> str | dict[str, Any] | None:
    """``response_format`` as Ollama's ``format``: ``"json"`` or a JSON schema."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return schema
        raise BadRequest(
            "response_format.json_schema.schema: expected a JSON schema object",
            param="response_format",
        )
    raise BadRequest(f"response_format: unsupported type {kind!r}", param="response_format")


def ollama_options(fields: dict[str, msgspec.Raw]) -> dict[str, Any]:
    """OpenAI sampling fields as Ollama ``options``; a client's own ``options`` win."""
    options: dict[str, Any] = {}
    for name in _OPTIONS:
        value = _field(fields, name)
        if value is not None:
            options[name] = value
    limit = _field(fields, "max_completion_tokens")
    if limit is None:
        limit = _field(fields, "max_tokens")
    if limit is not None:
        options["num_predict"] = limit
    stop = _field(fields, "stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else stop
    extra = _field(fields, "options")  # Ollama-native options sent as a vendor extra
    if isinstance(extra, dict):
        options.update(extra)
    return options


def _finish_body(
    body: dict[str, Any], fields: dict[str, msgspec.Raw], keep_alive: KeepAlive | None
) -> dict[str, Any]:
    options = ollama_options(fields)
    if options:
        body["options"] = options
    # Ollama-native extras pass through unless an OpenAI field already set them.
    for name in ("format", "think"):
        value = _field(fields, name)
        if value is not None and name not in body:
            body[name] = value
    # The operator's keep_alive is memory policy and beats a client's.
    client_keep_alive = _field(fields, "keep_alive")
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    elif isinstance(client_keep_alive, str | int):
        body["keep_alive"] = client_keep_alive
    return body


def _field(fields: dict[str, msgspec.Raw], name: str) -> Any:
    raw = fields.get(name)
    # The gateway decoded the body once already, so every value is valid JSON.
    return None if raw is None else _decode(raw)


def _single_choice(fields: dict[str, msgspec.Raw]) -> None:
    n = _field(fields, "n")
    if isinstance(n, int) and n > 1:
        raise BadRequest("n > 1 is not supported by Ollama", param="n")


def _think(reasoning_effort: Any) -> bool | str | None:
    if reasoning_effort in ("low", "medium", "high"):
        return str(reasoning_effort)
    if reasoning_effort in ("none", "minimal"):
        return False
    return None


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt: Ollama takes one string prompt (not token ids)", param="prompt")
    return prompt


# --- replies: Ollama → OpenAI (pure) ---------------------------------------------------------


def finish_reason(done_reason: str, called_tools: bool) -> str:
    if called_tools:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage(reply: _Reply | _Embeddings) -> dict[str, int]:
    completion = reply.eval_count if isinstance(reply, _Reply) else 0
    prompt = reply.prompt_eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def openai_tool_calls(calls: list[_ToolCall]) -> list[dict[str, Any]]:
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


def chat_completion(reply: _Reply, request: UpstreamRequest, created: int) -> dict[str, Any]:
    _raise_in_band(reply)
    message = reply.message or _Message()
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
    return _envelope("chatcmpl", "chat.completion", request, created, [choice], usage(reply))


def text_completion(reply: _Reply, request: UpstreamRequest, created: int) -> dict[str, Any]:
    _raise_in_band(reply)
    choice = {
        "text": reply.response,
        "index": 0,
        "logprobs": None,
        "finish_reason": finish_reason(reply.done_reason, False),
    }
    return _envelope("cmpl", "text_completion", request, created, [choice], usage(reply))


def embedding_list(reply: _Embeddings, request: UpstreamRequest) -> dict[str, Any]:
    _raise_in_band(reply)
    as_base64 = _field(request.fields, "encoding_format") == "base64"
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


def _envelope(
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


def _raise_in_band(reply: _Reply | _Embeddings) -> None:
    # A 200 whose body is Ollama's error shape: not a reply, whatever the status said.
    if reply.error is not None:
        raise UpstreamProtocolError(f"Ollama: {reply.error}")


# --- streams: NDJSON lines → OpenAI SSE events -----------------------------------------------


class _Chunks(Protocol):
    done: bool

    def feed(self, reply: _Reply) -> list[bytes]: ...


class _ChunkWriter:
    """Per-stream state shared by chat and text streams: the envelope and the closing events."""

    __slots__ = ("_created", "_object", "_prefix", "_request", "done")

    def __init__(self, request: UpstreamRequest, prefix: str, obj: str) -> None:
        self._request = request
        self._prefix = prefix
        self._object = obj
        self._created = int(time.time())
        self.done = False

    def event(self, choices: list[dict[str, Any]], tokens: dict[str, int] | None = None) -> bytes:
        chunk = _envelope(self._prefix, self._object, self._request, self._created, choices, tokens)
        return b"data: " + _encode(chunk) + b"\n\n"

    def closing(self, reply: _Reply, choice: dict[str, Any]) -> list[bytes]:
        """The finish_reason chunk, the usage chunk (``choices: []``, as OpenAI sends it), [DONE]."""
        self.done = True
        return [self.event([choice]), self.event([], usage(reply)), _DONE_EVENT]


class ChatChunks(_ChunkWriter):
    """Ollama chat lines in, ``chat.completion.chunk`` events out."""

    __slots__ = ("_calls", "_started")

    def __init__(self, request: UpstreamRequest) -> None:
        super().__init__(request, "chatcmpl", "chat.completion.chunk")
        self._calls = 0
        self._started = False

    def _delta(self, delta: dict[str, Any], logprobs: Any = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}
        return self.event([choice])

    def feed(self, reply: _Reply) -> list[bytes]:
        events = []
        if not self._started:
            self._started = True
            events.append(self._delta({"role": "assistant", "content": ""}))
        message = reply.message or _Message()
        if message.thinking:
            events.append(self._delta({"reasoning_content": message.thinking}))
        if message.content:
            logprobs = openai_logprobs(reply.logprobs)
            events.append(self._delta({"content": message.content}, logprobs))
        if message.tool_calls:
            # Each call arrives whole: one delta with its id, name and complete arguments.
            calls = openai_tool_calls(message.tool_calls)
            for call in calls:
                call["index"] = self._calls
                self._calls += 1
            events.append(self._delta({"tool_calls": calls}))
        if reply.done:
            finish = finish_reason(reply.done_reason, self._calls > 0)
            choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
            events += self.closing(reply, choice)
        return events


class TextChunks(_ChunkWriter):
    """Ollama generate lines in, ``text_completion`` events out."""

    __slots__ = ()

    def __init__(self, request: UpstreamRequest) -> None:
        super().__init__(request, "cmpl", "text_completion")

    def feed(self, reply: _Reply) -> list[bytes]:
        events = []
        if reply.response:
            choice = {"text": reply.response, "index": 0, "logprobs": None, "finish_reason": None}
            events.append(self.event([choice]))
        if reply.done:
            finish = finish_reason(reply.done_reason, False)
            choice = {"text": "", "index": 0, "logprobs": None, "finish_reason": finish}
            events += self.closing(reply, choice)
        return events


class NDJSONStream:
    """Frames Ollama's NDJSON body into lines and yields the OpenAI events they translate to.

    Deadlines as in ``SSEStream`` (``StreamDeadlines``): the first line within ``first_byte``
    of ``started`` (Ollama may be loading the model), each next one within ``idle``, the
    whole stream within ``max_stream``; a line is at most ``max_event_bytes``.
    """

    __slots__ = ("_chunks", "_deadlines", "_limit", "_response")

    def __init__(
        self, response: aiohttp.ClientResponse, chunks: _Chunks, timeouts: Timeouts, started: float
    ) -> None:
        refuse_unknown_encoding(response)
        self._response = response
        self._chunks = chunks
        self._deadlines = StreamDeadlines(timeouts, started, asyncio.get_running_loop().time)
        self._limit = timeouts.max_event_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        chunks = self._chunks
        deadlines = self._deadlines
        framer = Framer(b"\n", self._limit, "line")
        with mapped_client_errors():
            # Stop at the done line: waiting for the body's end could only add an idle timeout
            # after the client already has [DONE].
            while not chunks.done:
                try:
                    async with asyncio.timeout_at(deadlines.next()):
                        data = await content.readany()
                except TimeoutError:
                    raise deadlines.expired() from None
                if not data:
                    break
                lines = [line for line in framer.feed(data) if line.strip()]
                if lines:
                    deadlines.content()
                for line in lines:
                    if chunks.done:
                        break
                    for event in chunks.feed(_stream_line(line)):
                        yield event
            pending = framer.tail()
            if pending.strip() and not chunks.done:  # a last line without its newline
                for event in chunks.feed(_stream_line(pending)):
                    yield event
        if not chunks.done:
            raise UpstreamProtocolError("Ollama's stream ended before its final (done) line")

    async def aclose(self) -> None:
        if self._response.closed:
            return
        if self._response.content.at_eof():
            self._response.release()  # the whole body arrived: keep the connection for reuse
        else:
            self._response.close()  # release() would drain an unfinished body first


def _stream_line(line: bytes) -> _Reply:
    try:
        reply = _REPLY.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamProtocolError(
            f"Ollama sent a line that is not a reply: {line[:200]!r}"
        ) from None
    if reply.error is not None:
        raise UpstreamProtocolError(f"Ollama reported an error mid-stream: {reply.error}")
    return reply


# --- the adapter -----------------------------------------------------------------------------


class OllamaAdapter:
    """Speaks Ollama's native API; answers in OpenAI's wire format; manages Ollama's models."""

    def __init__(
        self,
        name: str,
        provider: Provider,
        session: aiohttp.ClientSession,
        keep_alive: KeepAlive | None = None,
    ) -> None:
        self.name = name
        self.provider = provider
        self._session = session
        self._root = ollama_root(provider.base_url)
        # None: each request leaves Ollama's own default (OLLAMA_KEEP_ALIVE, 5m) in place.
        self._keep_alive = keep_alive
        headers = {"Content-Type": "application/json", **provider.headers}
        if provider.api_key:  # Ollama's cloud and authenticating proxies take a bearer token
            headers["Authorization"] = f"Bearer {provider.api_key}"
        self._headers = headers
        t = provider.timeouts
        self._send_timeout = whole_answer_timeout(t)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=t.connect, sock_read=None
        )

    # --- the adapter protocol -----------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        model, fields, keep = request.model, request.fields, self._keep_alive
        created = int(time.time())
        if request.op is Operation.EMBEDDINGS:
            embedded = await self._post("/api/embed", embed_body(fields, model), _EMBEDDINGS)
            return _json_reply(embedding_list(embedded, request))
        if request.op is Operation.COMPLETIONS:
            reply = await self._post(
                "/api/generate", generate_body(fields, model, False, keep), _REPLY
            )
            return _json_reply(text_completion(reply, request, created))
        reply = await self._post("/api/chat", chat_body(fields, model, False, keep), _REPLY)
        return _json_reply(chat_completion(reply, request, created))

    async def open_stream(self, request: UpstreamRequest) -> NDJSONStream:
        model, fields, keep = request.model, request.fields, self._keep_alive
        chunks: _Chunks
        if request.op is Operation.CHAT:
            path, body, chunks = (
                "/api/chat",
                chat_body(fields, model, True, keep),
                ChatChunks(request),
            )
        elif request.op is Operation.COMPLETIONS:
            path, body = "/api/generate", generate_body(fields, model, True, keep)
            chunks = TextChunks(request)
        else:
            raise BadRequest(f"{request.op.value} cannot stream", param="stream")
        t = self.provider.timeouts
        started = asyncio.get_running_loop().time()
        with mapped_client_errors():
            async with asyncio.timeout(t.connect + t.first_byte):
                response = await self._session.post(
                    self._root + path,
                    data=_encode(body),
                    headers=self._headers,
                    timeout=self._stream_timeout,
                )
            if response.status >= 400:
                try:
                    async with asyncio.timeout(t.idle):
                        data = await response.read()
                finally:
                    response.release()
                raise UpstreamStatus(response.status, data)
        return NDJSONStream(response, chunks, t, started)

    async def probe(self) -> Probe:
        if self.provider.missing_env:
            return Probe(
                False, f"environment variable {', '.join(self.provider.missing_env)} not set"
            )
        timeout = aiohttp.ClientTimeout(total=min(2.0, self.provider.timeouts.connect + 1))
        try:
            version = await self._get("/api/version", _VERSION, timeout)
        except UpstreamError as exc:
            return Probe(False, exc.message)
        return Probe(True, f"ready (Ollama {version.version})")

    async def close(self) -> None:
        # The session is shared and owned by the app state.
        return None

    # --- model management, for the engine supervisor ------------------------------------------

    async def loaded_models(self) -> list[LoadedModel]:
        """The models Ollama holds in memory now."""
        running = await self._get("/api/ps", _RUNNING, self._send_timeout)
        return [
            LoadedModel(m.name, m.size, m.size_vram, m.expires_at) for m in running.models or ()
        ]

    async def context_window(self, model: str) -> int | None:
        """The loaded model's context (``/api/ps``); None while it is not loaded."""
        running = await self._get("/api/ps", _RUNNING, self._send_timeout)
        names = (model, f"{model}:latest")
        for loaded in running.models or ():
            if loaded.name in names and loaded.context_length > 0:
                return loaded.context_length
        return None

    async def load(self, model: str, keep_alive: KeepAlive | None = None) -> None:
        """Load ``model`` into memory; returns once Ollama answers that it is loaded.

        ``keep_alive`` is how long Ollama keeps it when idle: a duration (``"10m"``), seconds,
        or negative for ever; None uses the provider's setting, else Ollama's default (5m).
        Waits up to the provider's ``first_byte`` timeout (a large model loads slowly).
        Ollama loads through ``/api/generate``, so embedding-only models answer 400 here.
        """
        body: dict[str, Any] = {"model": model, "stream": False}
        keep = self._keep_alive if keep_alive is None else keep_alive
        if keep is not None:
            body["keep_alive"] = keep
        reply = await self._post("/api/generate", body, _REPLY)
        _raise_in_band(reply)
        if not reply.done:
            raise UpstreamProtocolError(f"Ollama did not confirm loading {model!r}")

    async def unload(self, model: str, wait: float = 30.0) -> None:
        """Unload ``model`` (``keep_alive: 0``); returns once ``/api/ps`` no longer lists it.

        Ollama answers at once and frees the memory in the background, so a caller about to
        load another model must not trust the answer alone. ``wait=0`` skips the polling;
        a model still listed after ``wait`` seconds raises ``UpstreamTimeout``.
        """
        body = {"model": model, "keep_alive": 0, "stream": False}
        reply = await self._post("/api/generate", body, _REPLY)
        _raise_in_band(reply)
        deadline = time.monotonic() + wait
        pause = 0.02
        while wait > 0:
            loaded = await self.loaded_models()
            if not any(same_model(model, m.name) for m in loaded):
                return
            if time.monotonic() >= deadline:
                raise UpstreamTimeout(f"Ollama still lists {model!r} {wait:g} s after unloading it")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    # --- HTTP ---------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any], decoder: msgspec.json.Decoder[T]) -> T:
        with mapped_client_errors():
            async with self._session.post(
                self._root + path,
                data=_encode(body),
                headers=self._headers,
                timeout=self._send_timeout,
            ) as response:
                data = await response.read()
        return _decoded(response.status, data, decoder)

    async def _get(
        self, path: str, decoder: msgspec.json.Decoder[T], read_timeout: aiohttp.ClientTimeout
    ) -> T:
        with mapped_client_errors():
            async with self._session.get(
                self._root + path, headers=self._headers, timeout=read_timeout
            ) as response:
                data = await response.read()
        return _decoded(response.status, data, decoder)


def _decoded(status: int, data: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    if status >= 400:
        raise UpstreamStatus(status, data)
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamProtocolError(f"Ollama answered something unexpected: {exc}") from None


def _json_reply(body: dict[str, Any]) -> UpstreamReply:
    return UpstreamReply(200, _encode(body))


def ollama_root(base_url: str) -> str:
    """The server root: ``http://host:11434``, with ``/`` or ``/v1`` (Ollama's OpenAI mount) cut."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root.rstrip("/")


def same_model(a: str, b: str) -> bool:
    """Ollama names ``llama3.2`` and ``llama3.2:latest`` the same model."""
    return _tagged(a) == _tagged(b)


def _tagged(name: str) -> str:
    # The tag follows the last path segment's colon; a registry host may carry a port colon.
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _factory(name: str, provider: Provider, session: aiohttp.ClientSession) -> OllamaAdapter:
    # Provider has no keep_alive key (yet); read it if a later config adds one.
    keep_alive = getattr(provider, "keep_alive", None)
    return OllamaAdapter(
        name, provider, session, keep_alive if isinstance(keep_alive, str | int) else None
    )


def register(registry: AdapterRegistry) -> None:
    registry.register("ollama", _factory)
