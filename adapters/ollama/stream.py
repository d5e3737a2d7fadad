"""Ollama's NDJSON stream → OpenAI SSE events.

Each line is one JSON object; the last says ``done: true`` and carries the token counts. Each
tool call arrives whole in one line and becomes one ``delta.tool_calls`` entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

import aiohttp
import msgspec

from adapters.base import UpstreamRequest
from adapters.http import (
    mapped_client_errors,
)
from adapters.ollama.replies import (
    REPLY,
    Message,
    Reply,
    envelope,
    finish_reason,
    openai_logprobs,
    openai_tool_calls,
    usage,
)
from adapters.streams import Framer, StreamDeadlines, refuse_unknown_encoding
from gateway.config.upstreams import Timeouts
from gateway.errors import (
    UpstreamProtocolError,
)

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
DONE_EVENT = b"data: [DONE]\n\n"


# --- streams: NDJSON lines → OpenAI SSE events -----------------------------------------------


class Chunks(Protocol):
    done: bool

    def feed(self, reply: Reply) -> list[bytes]: ...


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
        chunk = envelope(self._prefix, self._object, self._request, self._created, choices, tokens)
        return b"data: " + _encode(chunk) + b"\n\n"

    def closing(self, reply: Reply, choice: dict[str, Any]) -> list[bytes]:
        """The finish_reason chunk, the usage chunk (``choices: []``, as OpenAI sends it), [DONE]."""
        self.done = True
        return [self.event([choice]), self.event([], usage(reply)), DONE_EVENT]


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

    def feed(self, reply: Reply) -> list[bytes]:
        events = []
        if not self._started:
            self._started = True
            events.append(self._delta({"role": "assistant", "content": ""}))
        message = reply.message or Message()
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

    def feed(self, reply: Reply) -> list[bytes]:
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
        self, response: aiohttp.ClientResponse, chunks: Chunks, timeouts: Timeouts, started: float
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


def _stream_line(line: bytes) -> Reply:
    try:
        reply = REPLY.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamProtocolError(
            f"Ollama sent a line that is not a reply: {line[:200]!r}"
        ) from None
    if reply.error is not None:
        raise UpstreamProtocolError(f"Ollama reported an error mid-stream: {reply.error}")
    return reply
