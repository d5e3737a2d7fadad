"""OpenAI chat chunks as the Responses API's event stream, for one streamed answer."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

from gateway.contract import WireProtocol
from gateway.errors import GatewayError, UpstreamError, UpstreamProtocolError
from gateway.translate import (
    ChatMessage,
    ChatUsage,
    ToolCall,
    chunk_data,
    decode_chat,
    encode,
    error_message,
    plain_text,
    sse,
    sse_fields,
)
from gateway.translate.responses_items import (
    ResponseTemplate,
    ToolName,
    message_item,
    outcome,
    reasoning_item,
    summary_part,
    text_part,
)
from gateway.translate.responses_native import NativeEvents
from gateway.wire import Usage

_ARGUMENTS_DELTA = b"response.function_call_arguments.delta"
_SUMMARY_DELTA = "response.reasoning_summary_text.delta"
_TEXT_HEAD = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","sequence_number":'
)


# A piece this large is a closed item's text, shared by several events: written on its own.
_SHARED = 64 * 1024


def _pieces(out: list[bytes]) -> list[bytes]:
    """Runs of small pieces joined (one write for an ordinary reply), large ones kept apart."""
    pieces: list[bytes] = []
    run: list[bytes] = []
    for part in out:
        if len(part) < _SHARED:
            run.append(part)
            continue
        if run:
            pieces.append(b"".join(run))
            run = []
        pieces.append(part)
    if run:
        pieces.append(b"".join(run))
    return pieces


@dataclass(slots=True)
class _Open:
    """An output item being streamed: where it sits and what it has said so far."""

    index: int
    id: str
    # One growing buffer, not a list of deltas: a list holds ~60 bytes per token (the str
    # object and its slot), twelve times the text of a typical 5-character token.
    text: io.StringIO = field(default_factory=io.StringIO)
    # A text item's content as JSON string contents, grown from each delta's encoding (which
    # the delta event needs anyway). JSON escapes character by character, so the pieces joined
    # are the whole text's encoding: closing costs no decode-and-encode of a second and third
    # copy (a 100 MB answer peaked at 3x its size that way).
    escaped: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class _Call:
    item: _Open | None = None
    call_id: str | None = None
    name: str = ""
    # Fragments that arrived before the name (the item cannot be announced without it).
    pending: list[str] = field(default_factory=list)


class ResponseStream:
    """OpenAI chat chunks in, the Responses event stream out, for one streamed answer.

    Function-call items stay open until the answer ends (each event names its item, so
    interleaved calls are fine); a text or reasoning item closes when something else starts.

    A closed text is repeated by protocol in up to four events (``*.done``, the part, the item,
    the final Response). It is encoded once and kept as bytes; events carry a slot for it
    (``_slot``) and are spliced around the one copy, so a 20 MB answer costs 20 MB of encoded
    text plus the bytes actually sent, not one copy per event and per join. The closing events
    leave through ``finish()`` as pieces, the text one of them (``_pieces``), so even the four
    final events together never hold it more than once.
    """

    def __init__(self, template: ResponseTemplate) -> None:
        self._template = template
        self._ids = template.ids
        self._id = template.ids("resp_")
        self._seq = 0
        self._started = False
        self._items: list[dict[str, Any]] = []
        self._message: _Open | None = None
        self._reasoning: _Open | None = None
        # Anthropic's signed or redacted thinking of the open reasoning item, to seal at its end.
        self._blocks: list[dict[str, Any]] = []
        self._calls: dict[int, _Call] = {}
        self._finish: str | None = None
        self._chat_usage: ChatUsage | None = None
        # Thinking seen: reasoning tokens are estimated from it when the upstream counts none.
        self._thought_chars = 0
        # A client that asked for a reasoning summary (Codex) gets the thinking as one: what
        # it shows, and what it sends back (it drops reasoning_text when it does).
        self._reasoning_delta = (
            _SUMMARY_DELTA if template.reasoning_summary else "response.reasoning_text.delta"
        )
        # What follows the sequence number in the open message's text deltas.
        self._text_mid = b""
        # Closed items' texts, JSON-encoded; events refer to them by slot.
        self._texts: list[bytes] = []
        self.usage: Usage | None = None
        # The upstream said [DONE]: the closing events wait for finish(), which returns pieces.
        self._ended = False
        self.done = False
        self.failed = False
        # Set when the upstream answers in Responses' own events (``begin``).
        self._native: NativeEvents | None = None

    def begin(self, protocol: WireProtocol) -> None:
        """An upstream that speaks Responses itself answers in its own events: relayed as they
        are (gateway/translate/responses_native.py); any other answers OpenAI chat."""
        if protocol is WireProtocol.RESPONSES:
            self._native = NativeEvents()

    @property
    def native_final(self) -> bytes | None:
        """The final Response of a relayed native stream (None when translated)."""
        return self._native.final if self._native is not None else None

    def feed(self, event: bytes) -> bytes:
        """Responses events for one upstream event; raises ``UpstreamError`` on in-band errors."""
        native = self._native
        if native is not None:
            return native.feed(event)
        if self.done or self._ended:
            return b""  # nothing may follow response.completed
        data = chunk_data(event)
        if data is None:
            name, data = sse_fields(event)
            if name == b"error":
                raise UpstreamError(
                    f"upstream error mid-stream: {data.decode('utf-8', 'replace')[:300]}"
                )
        if data == b"[DONE]":
            self._ended = True
            return b""
        if not data:
            return b""
        chunk = decode_chat(data)
        if chunk.error is not None:
            raise UpstreamError(f"upstream error mid-stream: {error_message(chunk.error)}")
        message = self._message
        text = plain_text(chunk) if message is not None else None
        if text is not None and message is not None:
            # Most chunks: one more piece of the open message's text.
            quoted = encode(text)
            message.escaped += quoted[1:-1]
            seq = self._seq
            self._seq += 1
            return _TEXT_HEAD + b"%d" % seq + self._text_mid + quoted + b',"logprobs":[]}\n\n'
        out: list[bytes] = []
        if not self._started:
            self._start(out)
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
        if self._native is not None:
            self.usage = self._native.usage
            return []
        if self.done or self.failed:
            return []
        if self._finish is None and not self._ended:
            raise UpstreamProtocolError("upstream stream ended before the answer was complete")
        return self._close()

    def fail(self, error: GatewayError) -> bytes:
        """``response.failed``: the client learns what failed and keeps what was said so far."""
        self.failed = True
        if self._native is not None:
            self.usage = self._native.usage
            return self._native.fail(error)
        out: list[bytes] = []
        if not self._started:
            self._start(out)
        body = {
            "code": "server_error" if error.status >= 500 else "invalid_prompt",
            "message": error.message,
        }
        response = self._template.response(
            self._id, "failed", self._items, self._chat_usage, error=body
        )
        self._emit(out, "response.failed", {"response": response})
        return b"".join(out)

    # --- events ---

    def _emit(self, out: list[bytes], kind: str, payload: dict[str, Any]) -> None:
        event = {"type": kind, "sequence_number": self._seq, **payload}
        self._seq += 1
        data = encode(event)
        if not self._texts or b"\x00" not in data:
            out.append(sse(kind.encode(), data))
            return
        # msgspec escapes control characters in every string it encodes, so a raw NUL can
        # only come from a slot: "\x00<n>\x00" splits into [head, n, mid, n, ..., tail].
        pieces = data.split(b"\x00")
        out.append(b"event: " + kind.encode() + b"\ndata: " + pieces[0])
        for i in range(1, len(pieces), 2):
            out.append(self._texts[int(pieces[i])])
            out.append(pieces[i + 1])
        out.append(b"\n\n")

    def _slot(self, item: _Open) -> msgspec.Raw:
        """A closed text item's encoded text, kept once; the slot that stands for it in events.

        The buffer itself becomes the JSON string (quotes added in place), not a copy of it: a
        large one is written to the client in slices (``HttpClient.write``); a small one is
        joined with the events around it (``_pieces``).
        """
        encoded = item.escaped
        item.escaped = bytearray()
        encoded[0:0] = b'"'
        encoded += b'"'
        # Typed as bytes: everything downstream only joins, slices and writes it (the buffer
        # protocol), and a bytes() of a 100 MB text would be the very copy this avoids.
        self._texts.append(cast(bytes, encoded) if len(encoded) >= _SHARED else bytes(encoded))
        return msgspec.Raw(b"\x00%d\x00" % (len(self._texts) - 1))

    def _start(self, out: list[bytes]) -> None:
        self._started = True
        # Codex's instructions and tools run to tens of KB; repeating them in both opening
        # events would cost more than the whole translation. response.completed has them.
        response = self._template.response(self._id, "in_progress", [])
        response["instructions"] = None
        response["tools"] = []
        body = encode(response)  # once, for both events
        for kind in (b"response.created", b"response.in_progress"):
            head = b'{"type":"%s","sequence_number":%d,"response":' % (kind, self._seq)
            self._seq += 1
            out.append(sse(kind, head + body + b"}"))

    def _add_item(self, out: list[bytes], item: dict[str, Any]) -> _Open:
        opened = _Open(len(self._items), item["id"])
        self._items.append(item)
        self._emit(out, "response.output_item.added", {"output_index": opened.index, "item": item})
        return opened

    def _done_item(self, out: list[bytes], index: int, item: dict[str, Any]) -> None:
        self._items[index] = item
        self._emit(out, "response.output_item.done", {"output_index": index, "item": item})

    def _delta(self, delta: ChatMessage, out: list[bytes]) -> None:
        thought = delta.reasoning_content or delta.reasoning
        if thought:
            self._thought_chars += len(thought)
            self._close_message(out)
            if self._reasoning is None:
                self._open_reasoning(out)
            assert self._reasoning is not None
            self._text_delta(out, self._reasoning_delta, self._reasoning, thought)
        if delta.thinking_blocks:
            if self._reasoning is None:
                self._close_message(out)
                self._open_reasoning(out)
            self._blocks.extend(delta.thinking_blocks)
        text = delta.content or delta.refusal
        if text:
            self._close_reasoning(out)
            if self._message is None:
                self._open_message(out)
            assert self._message is not None
            self._text_delta(out, "response.output_text.delta", self._message, text)
        for call in delta.tool_calls or ():
            self._call(call, out)

    def _text_delta(self, out: list[bytes], kind: str, item: _Open, text: str) -> None:
        # The per-token path: bytes assembled directly (ids are ours, plain ASCII).
        quoted = encode(text)
        item.escaped += quoted[1:-1]
        name = kind.encode()
        tail = b',"logprobs":[]}' if kind == "response.output_text.delta" else b"}"
        part = b'"summary_index":0,' if kind == _SUMMARY_DELTA else b'"content_index":0,'
        data = b'{"type":"%s","sequence_number":%d,"item_id":"%s","output_index":%d,' % (
            name,
            self._seq,
            item.id.encode(),
            item.index,
        )
        self._seq += 1
        out.append(sse(name, data + part + b'"delta":' + quoted + tail))

    def _open_message(self, out: list[bytes]) -> None:
        self._message = self._add_item(out, message_item(self._ids("msg_"), "in_progress", None))
        self._text_mid = b',"item_id":"%s","output_index":%d,"content_index":0,"delta":' % (
            self._message.id.encode(),
            self._message.index,
        )
        part = {
            "item_id": self._message.id,
            "output_index": self._message.index,
            "content_index": 0,
        }
        self._emit(out, "response.content_part.added", {**part, "part": text_part("")})

    def _close_message(self, out: list[bytes]) -> None:
        item, self._message = self._message, None
        if item is None:
            return
        text = self._slot(item)
        where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
        self._emit(out, "response.output_text.done", {**where, "text": text, "logprobs": []})
        self._emit(out, "response.content_part.done", {**where, "part": text_part(text)})
        self._done_item(out, item.index, message_item(item.id, "completed", text))

    def _open_reasoning(self, out: list[bytes]) -> None:
        summary = self._template.reasoning_summary
        item = self._add_item(out, reasoning_item(self._ids("rs_"), None, summary))
        self._reasoning = item
        if summary:
            where = {"item_id": item.id, "output_index": item.index, "summary_index": 0}
            part = summary_part("")
            self._emit(out, "response.reasoning_summary_part.added", {**where, "part": part})

    def _close_reasoning(self, out: list[bytes]) -> None:
        item, self._reasoning = self._reasoning, None
        if item is None:
            return
        sealed = self._sealed(item)
        text = self._slot(item)
        summary = self._template.reasoning_summary
        if summary:
            where = {"item_id": item.id, "output_index": item.index, "summary_index": 0}
            self._emit(out, "response.reasoning_summary_text.done", {**where, "text": text})
            part = summary_part(text)
            self._emit(out, "response.reasoning_summary_part.done", {**where, "part": part})
        else:
            where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            self._emit(out, "response.reasoning_text.done", {**where, "text": text})
        self._done_item(out, item.index, reasoning_item(item.id, text, summary, sealed))

    def _sealed(self, item: _Open) -> str | None:
        """The closing reasoning item's ``encrypted_content``, if it gets one."""
        blocks, self._blocks = self._blocks, []
        template = self._template
        if not blocks and not (template.encrypted_reasoning and item.escaped):
            return None
        return template.sealed(msgspec.json.decode(b'"' + item.escaped + b'"'), blocks)

    def _call(self, delta: ToolCall, out: list[bytes]) -> None:
        key = delta.index if delta.index is not None else self._implicit_index(delta)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _Call()
        if delta.id and not call.call_id:
            call.call_id = delta.id
        function = delta.function
        if function is not None:
            if function.name and call.item is None:
                call.name = function.name
            if function.arguments:
                if call.item is None:
                    call.pending.append(function.arguments)
                else:
                    self._arguments_delta(out, call, function.arguments)
        if call.item is None and call.name:
            self._close_message(out)
            self._close_reasoning(out)
            call.call_id = call.call_id or self._ids("call_")
            item = self._template.call_item(
                call.name, call.call_id, "", self._ids("fc_"), "in_progress"
            )
            call.item = self._add_item(out, item)
            if call.pending:
                self._arguments_delta(out, call, "".join(call.pending))
                call.pending.clear()

    def _arguments_delta(self, out: list[bytes], call: _Call, fragment: str) -> None:
        assert call.item is not None
        call.item.text.write(fragment)
        if self._template.tools.get(call.name, ToolName("")).custom:
            return  # a custom tool's input is the JSON's "input" string, known only at the end
        data = b'{"type":"%s","sequence_number":%d,"item_id":"%s","output_index":%d,"delta":' % (
            _ARGUMENTS_DELTA,
            self._seq,
            call.item.id.encode(),
            call.item.index,
        )
        self._seq += 1
        out.append(sse(_ARGUMENTS_DELTA, data + encode(fragment) + b"}"))

    def _implicit_index(self, delta: ToolCall) -> int:
        if delta.id:
            for key, call in self._calls.items():
                if call.call_id == delta.id:
                    return key
            return len(self._calls)
        return max(self._calls, default=0)

    def _close_call(self, out: list[bytes], call: _Call) -> None:
        item = call.item
        assert item is not None and call.call_id is not None
        arguments = item.text.getvalue()
        final = self._template.call_item(call.name, call.call_id, arguments, item.id, "completed")
        where = {"item_id": item.id, "output_index": item.index}
        if final["type"] == "custom_tool_call":
            self._emit(
                out, "response.custom_tool_call_input.delta", {**where, "delta": final["input"]}
            )
            self._emit(
                out, "response.custom_tool_call_input.done", {**where, "input": final["input"]}
            )
        else:
            self._emit(
                out, "response.function_call_arguments.done", {**where, "arguments": arguments}
            )
        self._done_item(out, item.index, final)

    def _close(self) -> list[bytes]:
        if self.done:
            return []
        out: list[bytes] = []
        if not self._started:
            self._start(out)
        self._close_reasoning(out)
        self._close_message(out)
        for call in sorted(self._calls.values(), key=lambda c: c.item.index if c.item else 0):
            if call.item is not None:
                self._close_call(out, call)
        status, incomplete = outcome(self._finish)
        if self._chat_usage is not None:
            # The Response says its reasoning tokens too, estimated where the upstream is silent.
            self._chat_usage.count_reasoning(self._thought_chars)
        response = self._template.response(
            self._id, status, self._items, self._chat_usage, incomplete=incomplete
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        self._emit(out, kind, {"response": response})
        self.done = True
        self.usage = self._chat_usage.wire(self._thought_chars) if self._chat_usage else None
        return _pieces(out)
