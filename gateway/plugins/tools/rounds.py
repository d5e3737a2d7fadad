"""One streamed model call of the agent loop, read event by event, and the events it writes.

A client that asked for a stream gets the loop's answer as the model writes it: every round is
asked for as a stream, and ``StreamedRound.feed`` says, per upstream event, what the client gets
now. Text (content and reasoning deltas) goes out as it comes, the upstream's own bytes when the
chunk holds nothing else; tool-call deltas, the finish chunk and usage are kept, since only the
round's end says whether the loop runs the calls or answers. A round whose text never started
shows the client nothing: its role chunk is held back with the text and dropped with it.

The loop then closes the client's stream itself (``closing_events``): the client's own tool
calls if the model made any, one finish chunk carrying the ``turnout`` extension, one usage
chunk with every round's tokens (the relay counts it, and drops it for clients that did not
ask for usage), and ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import UpstreamProtocolError
from gateway.plugins.tools.replies import FunctionCall, Message, ToolCall
from gateway.translate import sse_fields
from gateway.wire import Usage

_encode = msgspec.json.Encoder().encode
_decode_dict = msgspec.json.Decoder(dict[str, Any])
DONE = b"data: [DONE]\n\n"
# Between the text of two rounds that both showed some: "let me look." then "It is 21 C."
SEPARATOR = "\n\n"


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    # A JSON fragment per OpenAI; a server that sends the whole call at once may send the object.
    arguments: str | dict[str, Any] | None = None


class _CallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_CallDelta] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    id: str = ""
    created: int = 0
    model: str = ""
    choices: list[_Choice] = []
    usage: Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk)


class _CallParts:
    """One tool call, put together from its deltas."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.name = ""
        self.arguments: list[str] = []

    def add(self, delta: _CallDelta) -> None:
        self.id = self.id or delta.id
        function = delta.function
        if function is None:
            return
        if function.name:
            self.name = self.name or function.name
        arguments = function.arguments
        if isinstance(arguments, dict):
            self.arguments = [_encode(arguments).decode()]
        elif arguments:
            self.arguments.append(arguments)

    def call(self) -> ToolCall:
        return ToolCall(self.id, FunctionCall(self.name, "".join(self.arguments) or "{}"))


class StreamedRound:
    """What one streamed model call said, and what of it the client has seen."""

    def __init__(self, separate: bool = False) -> None:
        # An earlier round showed text: this one's starts on a new paragraph.
        self._separate = separate
        self._text: list[str] = []
        self._calls: dict[int, _CallParts] = {}
        self._held: list[bytes] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        # id, created and model of the round's chunks, for the events the loop writes.
        self.head: dict[str, Any] = {}
        self.showing = False
        self.done = False

    def feed(self, event: bytes) -> list[bytes]:
        """The client's share of one upstream event (often the event itself, or nothing)."""
        name, data = sse_fields(event)
        if name == b"error":
            raise UpstreamProtocolError(f"upstream stream failed: {data[:300]!r}")
        if data == b"[DONE]":
            self.done = True
            return []
        if not data:  # a comment (keep-alive)
            return []
        try:
            chunk = _decode_chunk.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamProtocolError(f"upstream stream event is not a chunk: {exc}") from None
        if not self.head and chunk.id:
            self.head = {"id": chunk.id, "created": chunk.created, "model": chunk.model}
        if chunk.usage is not None:
            self.usage = chunk.usage
        if not chunk.choices:
            return []
        choice = chunk.choices[0]
        delta = choice.delta or _Delta()
        for call in delta.tool_calls or ():
            self._calls.setdefault(call.index, _CallParts()).add(call)
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        plain = chunk.usage is None and not delta.tool_calls and not choice.finish_reason
        if delta.content:
            self._text.append(delta.content)
        if not (delta.content or delta.reasoning_content or delta.reasoning):
            # Nothing to read: a role chunk waits for the round's text, others go as they are.
            if not plain:
                return []
            if not self.showing:
                self._held.append(event)
                return []
            return [event]
        return self._show(event, data, plain, bool(delta.content))

    def _show(self, event: bytes, data: bytes, plain: bool, content: bool) -> list[bytes]:
        out: list[bytes] = []
        if not self.showing:
            self.showing = True
            out, self._held = self._held, []
        if plain and not (content and self._separate):
            out.append(event)
            return out
        # Rewritten: text without the calls, finish and usage the loop keeps, or with the
        # paragraph break ahead of this round's first text.
        chunk = _decode_dict.decode(data)
        chunk.pop("usage", None)
        choice = chunk["choices"][0]
        delta = {k: v for k, v in (choice.get("delta") or {}).items() if k != "tool_calls"}
        if content and self._separate:
            delta["content"] = SEPARATOR + delta["content"]
            self._separate = False
        chunk["choices"] = [{**choice, "delta": delta, "finish_reason": None}]
        out.append(_sse(chunk))
        return out

    @property
    def text(self) -> str:
        return "".join(self._text)

    def tool_calls(self) -> list[ToolCall]:
        return [self._calls[i].call() for i in sorted(self._calls)]

    def message(self) -> Message:
        """The round as the assistant message the loop puts in the conversation."""
        return Message(self.text or None, self.tool_calls() or None)


def closing_events(
    last: StreamedRound,
    calls: list[ToolCall],
    usage: dict[str, Any],
    extension: dict[str, Any],
    shown: bool,
) -> list[bytes]:
    """The end of the client's stream: ``calls`` (the client's own tool calls, or none), the
    finish chunk with the extension, the usage of every round, ``[DONE]``. ``shown``: the
    client has had a chunk already (else the calls, or an empty text, carry the role)."""
    head = {"id": "chatcmpl-turnout", "created": 0, "model": "", **last.head}
    head["object"] = "chat.completion.chunk"
    events: list[bytes] = []
    if calls or not shown:
        delta: dict[str, Any] = {} if shown else {"role": "assistant", "content": ""}
        if calls:
            delta["tool_calls"] = [
                {"index": i, "id": c.id, "type": "function", "function": _function(c)}
                for i, c in enumerate(calls)
            ]
        events.append(_sse({**head, "choices": [{"index": 0, "delta": delta}]}))
    finish = last.finish_reason or "stop"
    if calls:
        finish = "tool_calls"
    elif finish == "tool_calls":
        # The model called tools the loop does not answer with (it ignored tool_choice "none"):
        # its answer is what text it gave.
        finish = "stop"
    finishing = {"index": 0, "delta": {}, "finish_reason": finish}
    # The extension rides on the finish chunk: the usage chunk is dropped for clients that did
    # not ask for usage.
    events.append(_sse({**head, "choices": [finishing], "turnout": extension}))
    events.append(_sse({**head, "choices": [], "usage": usage}))
    events.append(DONE)
    return events


def _function(call: ToolCall) -> dict[str, Any]:
    function = call.function or FunctionCall()
    arguments = function.arguments
    text = arguments if isinstance(arguments, str) else _encode(arguments or {}).decode()
    return {"name": function.name, "arguments": text}


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + _encode(chunk) + b"\n\n"
