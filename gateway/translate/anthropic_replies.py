"""OpenAI chat answers in Anthropic's shape: a Message, the Messages event stream, errors.

An Anthropic upstream that was sent the client's original request answers in its own format,
and says so (``UpstreamReply.protocol``, ``OpenStream.protocol``): that answer is relayed
unchanged, its usage read on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.contract import WireProtocol
from gateway.errors import GatewayError, UpstreamError, UpstreamProtocolError
from gateway.translate import (
    ChatMessage,
    ChatUsage,
    IdFactory,
    ToolCall,
    chunk_data,
    decode_chat,
    encode,
    error_message,
    new_id,
    parse_arguments,
    plain_text,
    sse,
    sse_fields,
)
from gateway.translate.reasoning import TURNOUT_SIGNATURE
from gateway.wire import PromptDetails, Usage

# --- replies -----------------------------------------------------------------------------------


class _NativeUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def prompt(self) -> int:
        return (
            (self.input_tokens or 0)
            + (self.cache_creation_input_tokens or 0)
            + (self.cache_read_input_tokens or 0)
        )


class _NativeMessage(msgspec.Struct):
    usage: _NativeUsage | None = None


class _NativeEvent(msgspec.Struct):
    """A native message (non-streaming) or stream event, read for its usage only."""

    type: Any = None
    message: _NativeMessage | None = None
    usage: _NativeUsage | None = None


_NATIVE = msgspec.json.Decoder(_NativeEvent)


def stop_reason(finish: str | None, used_tools: bool) -> str:
    if finish == "length":
        return "max_tokens"
    # Some local engines say "stop" after a tool call; Claude Code runs tools only on tool_use.
    if used_tools or finish in ("tool_calls", "function_call"):
        return "tool_use"
    if finish == "content_filter":
        return "refusal"
    return "end_turn"


def anthropic_usage(usage: ChatUsage | None) -> dict[str, int]:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    cached, writes = usage.cached, usage.cache_writes
    return {
        "input_tokens": max(0, usage.prompt - cached - writes),
        "cache_creation_input_tokens": writes,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.completion,
    }


def render_message(
    body: bytes,
    model: str,
    thinking: bool,
    ids: IdFactory = new_id,
    protocol: WireProtocol = WireProtocol.OPENAI,
) -> tuple[bytes, Usage | None]:
    """An OpenAI chat completion as an Anthropic Message (a native Message passes unchanged)."""
    if protocol is WireProtocol.ANTHROPIC:
        return body, _native_reply_usage(body)
    chat = decode_chat(body)
    choice = chat.first()
    message = (choice.message if choice else None) or ChatMessage()
    content: list[dict[str, Any]] = []
    if thinking and message.thought:
        content.append(
            {"type": "thinking", "thinking": message.thought, "signature": TURNOUT_SIGNATURE}
        )
    text = message.content or message.refusal
    if text:
        content.append({"type": "text", "text": text})
    for call in message.tool_calls or ():
        function = call.function
        content.append(
            {
                "type": "tool_use",
                "id": call.id or ids("toolu_"),
                "name": (function.name if function else None) or "",
                "input": parse_arguments(function.arguments if function else None),
            }
        )
    finish = choice.finish_reason if choice else None
    reply = {
        "id": ids("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish, bool(message.tool_calls)),
        "stop_sequence": None,
        "usage": anthropic_usage(chat.usage),
    }
    usage = chat.usage.wire(len(message.thought or "")) if chat.usage else None
    return encode(reply), usage


def _native_reply_usage(body: bytes) -> Usage | None:
    try:
        usage = _NATIVE.decode(body).usage
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return _native_usage(usage, usage)


def _native_usage(start: _NativeUsage | None, end: _NativeUsage | None) -> Usage | None:
    if start is None and end is None:
        return None
    prompt = start.prompt() if start else 0
    completion = (end.output_tokens if end else None) or 0
    cached = (start.cache_read_input_tokens if start else None) or 0
    details = PromptDetails(cached) if cached else None
    return Usage(prompt, completion, prompt + completion, details)


class _PromptProgress(msgspec.Struct):
    total: int = 0
    cache: int = 0


class _FirstChunk(msgspec.Struct):
    prompt_progress: _PromptProgress | None = None


_FIRST_CHUNK = msgspec.json.Decoder(_FirstChunk)


def _start_usage(first: bytes) -> dict[str, int]:
    """message_start's usage from the first upstream chunk, decoded once per stream.

    llama.cpp's first chunk says the prompt's size before prefill starts (``prompt_progress``,
    asked for by its adapter on translated streams): split like message_delta's usage, cached
    tokens apart. Other upstreams tell nothing until the end: 0, and message_delta has the truth.
    """
    if b'"prompt_progress"' in first:
        try:
            progress = _FIRST_CHUNK.decode(first).prompt_progress
        except (msgspec.DecodeError, msgspec.ValidationError):
            progress = None
        if progress is not None and progress.total > 0:
            cached = min(progress.cache, progress.total)
            return {
                "input_tokens": progress.total - cached,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached,
                "output_tokens": 0,
            }
    return {"input_tokens": 0, "output_tokens": 0}


@dataclass(slots=True)
class _Tool:
    """One OpenAI tool call (by its ``index``) on its way to becoming a tool_use block."""

    id: str | None = None
    name: str = ""
    block: int | None = None
    # Argument fragments not sent yet: before the name (the block cannot start without
    # it), or all of them when they do not start like a JSON object.
    pending: list[str] = field(default_factory=list)
    # Whether fragments stream through as they come: decided by the first one that is not
    # blank. Anthropic's clients parse every prefix, so what is not an object waits and is
    # sent whole, as an object, when the block closes.
    live: bool | None = None


_TEXT_DELTA = b'"delta":{"type":"text_delta","text":'
_JSON_DELTA = b'"delta":{"type":"input_json_delta","partial_json":'
_THINKING_DELTA = b'"delta":{"type":"thinking_delta","thinking":'
_SIGNATURE_DELTA = b'"delta":{"type":"signature_delta","signature":'


class MessageStream:
    """OpenAI chat chunks in, Anthropic's Messages event stream out, for one streamed answer.

    Blocks follow Anthropic's order: each ``content_block_start`` closes the block before it.
    OpenAI streams tool calls one after another, so a tool call's block stays open until the
    next block starts; a fragment for an earlier call (no server we know sends one) is still
    sent, on that call's index, rather than lost.
    """

    def __init__(self, model: str, thinking: bool, ids: IdFactory = new_id) -> None:
        self._model = model
        self._thinking = thinking
        self._ids = ids
        # The upstream answers in Anthropic's own events (``begin``): relayed, not translated.
        self._native = False
        self._started = False
        # The bytes before a text delta's JSON string, for the open block.
        self._text_head = b""
        self._open_tool: _Tool | None = None
        self._open = ""  # kind of the open block: "text", "thinking", "tool" or ""
        self._index = -1
        self._blocks = 0
        self._tools: dict[int, _Tool] = {}
        self._finish: str | None = None
        self._chat_usage: ChatUsage | None = None
        # Thinking seen, shown or not: reasoning tokens are estimated from it when the
        # upstream counts none.
        self._thought_chars = 0
        self._native_start: _NativeUsage | None = None
        self._native_end: _NativeUsage | None = None
        self.usage: Usage | None = None
        self.done = False
        self.failed = False

    def begin(self, protocol: WireProtocol) -> None:
        """Told once, before the first event, which protocol the upstream answers in."""
        self._native = protocol is WireProtocol.ANTHROPIC

    def feed(self, event: bytes) -> bytes:
        """Anthropic events for one upstream event; raises ``UpstreamError`` on in-band errors."""
        if self._native:
            return self._relay(event)
        if self.done:
            return b""  # nothing may follow message_stop
        data = chunk_data(event)
        if data is None:
            name, data = sse_fields(event)
            if name == b"error":
                raise UpstreamError(f"upstream error mid-stream: {_error_text(data)}")
        if data == b"[DONE]":
            return self._close()
        if not data:
            return b""
        chunk = decode_chat(data)
        if chunk.error is not None:
            raise UpstreamError(f"upstream error mid-stream: {error_message(chunk.error)}")
        text = plain_text(chunk) if self._open == "text" else None
        if text is not None:
            # Most chunks: one more piece of the open text block.
            return self._text_head + encode(text) + b"}}\n\n"
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start(data))
        if chunk.usage is not None:
            self._chat_usage = chunk.usage
        choice = chunk.first()
        if choice is not None:
            delta = choice.delta or choice.message
            if delta is not None:
                self._delta(delta, out)
            if choice.finish_reason:
                self._finish = choice.finish_reason
        return b"".join(out)

    def finish(self) -> list[bytes]:
        """The closing events once the upstream stream ended; raises if it ended too early."""
        if self.done or self.failed:
            return []
        if self._native:
            raise UpstreamProtocolError("upstream stream ended before message_stop")
        if self._finish is None:
            raise UpstreamProtocolError("upstream stream ended before the answer was complete")
        # Some servers end after the finish chunk without [DONE]; the answer is whole.
        return [self._close()]

    def fail(self, error: GatewayError) -> bytes:
        self.failed = True
        return error_event(error)

    # --- OpenAI → Anthropic ---

    def _delta(self, delta: ChatMessage, out: list[bytes]) -> None:
        thought = delta.reasoning_content or delta.reasoning
        if thought:
            self._thought_chars += len(thought)
        if thought and self._thinking:
            if self._open != "thinking":
                self._start(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._block_delta(_THINKING_DELTA, thought))
        text = delta.content or delta.refusal
        if text:
            if self._open != "text":
                self._start(out, "text", {"type": "text", "text": ""})
            out.append(self._block_delta(_TEXT_DELTA, text))
        for call in delta.tool_calls or ():
            self._tool(call, out)

    def _tool(self, call: ToolCall, out: list[bytes]) -> None:
        key = call.index if call.index is not None else self._implicit_index(call)
        tool = self._tools.get(key)
        if tool is None:
            tool = self._tools[key] = _Tool()
        if call.id and not tool.id:
            tool.id = call.id
        function = call.function
        if function is not None:
            # Names are not fragmented by any server we know, but some repeat them.
            if function.name and tool.block is None:
                tool.name = function.name
            if function.arguments:
                tool.pending.append(function.arguments)
        if tool.block is None and tool.name:
            block = {
                "type": "tool_use",
                "id": tool.id or self._ids("toolu_"),
                "name": tool.name,
                "input": {},
            }
            tool.block = self._start(out, "tool", block)
            self._open_tool = tool
        if tool.block is not None and tool.pending and tool.live is not False:
            fragment = "".join(tool.pending)
            if tool.live is None and not fragment.isspace():
                tool.live = fragment.lstrip().startswith("{")
            if tool.live:
                out.append(self._block_delta(_JSON_DELTA, fragment, tool.block))
                tool.pending.clear()

    def _implicit_index(self, call: ToolCall) -> int:
        """Servers that omit ``index``: a new id is a new call, no id continues the last one."""
        if call.id:
            for key, tool in self._tools.items():
                if tool.id == call.id:
                    return key
            return len(self._tools)
        return max(self._tools, default=0)

    def _message_start(self, first: bytes = b"") -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": self._ids("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _start_usage(first),
        }
        return sse(b"message_start", encode({"type": "message_start", "message": message}))

    def _start(self, out: list[bytes], kind: str, block: dict[str, Any]) -> int:
        self._stop_block(out)
        index = self._index = self._blocks
        self._blocks += 1
        self._open = kind
        start = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(sse(b"content_block_start", encode(start)))
        self._text_head = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,' % index
            + _TEXT_DELTA
        )
        return index

    def _stop_block(self, out: list[bytes]) -> None:
        tool, self._open_tool = self._open_tool, None
        if tool is not None and tool.pending and tool.block is not None:
            # Arguments that were not an object as they came: the whole, made one.
            whole = encode(parse_arguments("".join(tool.pending))).decode()
            out.append(self._block_delta(_JSON_DELTA, whole, tool.block))
            tool.pending.clear()
        if self._open == "thinking":
            # Anthropic ends every thinking block with its signature; a local model's gets
            # turnout's marker (gateway.translate.reasoning).
            out.append(self._block_delta(_SIGNATURE_DELTA, TURNOUT_SIGNATURE))
        if self._open:
            stop = b'{"type":"content_block_stop","index":%d}' % self._index
            out.append(sse(b"content_block_stop", stop))
            self._open = ""

    def _block_delta(self, head: bytes, value: str, index: int | None = None) -> bytes:
        at = self._index if index is None else index
        data = b'{"type":"content_block_delta","index":%d,' % at + head + encode(value) + b"}}"
        return sse(b"content_block_delta", data)

    def _close(self) -> bytes:
        if self.done:
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start())
        self._stop_block(out)
        used_tools = any(t.block is not None for t in self._tools.values())
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self._finish, used_tools), "stop_sequence": None},
            "usage": anthropic_usage(self._chat_usage),
        }
        out.append(sse(b"message_delta", encode(delta)))
        out.append(sse(b"message_stop", b'{"type":"message_stop"}'))
        self.done = True
        self.usage = self._chat_usage.wire(self._thought_chars) if self._chat_usage else None
        return b"".join(out)

    # --- Anthropic → Anthropic ---

    def _relay(self, event: bytes) -> bytes:
        """Native events pass unchanged; usage is read on the way for metrics."""
        if event.startswith(b"event: message_start") or event.startswith(b"event: message_delta"):
            _, data = sse_fields(event)
            try:
                parsed = _NATIVE.decode(data)
            except (msgspec.ValidationError, msgspec.DecodeError):
                parsed = _NativeEvent()
            if parsed.message is not None and parsed.message.usage is not None:
                self._native_start = parsed.message.usage
            if parsed.usage is not None:
                self._native_end = parsed.usage
        elif event.startswith(b"event: message_stop"):
            self.done = True
            self.usage = _native_usage(self._native_start, self._native_end)
        elif event.startswith(b"event: error"):
            self.failed = True
        return event


def _error_text(data: bytes) -> str:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode("utf-8", "replace")[:300]
    return error_message(value.get("error", value) if isinstance(value, dict) else value)


# --- errors ------------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(error: GatewayError, request_id: str) -> bytes:
    """Anthropic's error envelope, as an HTTP error body."""
    inner = {"type": error_type(error.status), "message": error.message}
    return encode({"type": "error", "error": inner, "request_id": request_id})


def error_event(error: GatewayError) -> bytes:
    """Anthropic's error envelope as an in-stream ``error`` event."""
    inner = {"type": error_type(error.status), "message": error.message}
    return sse(b"error", encode({"type": "error", "error": inner}))
