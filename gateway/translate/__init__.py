"""Translating between OpenAI chat and the other protocols clients and upstreams speak.

Everything in this package is pure: bytes and Structs in, bytes and Structs out, no I/O, no
clock (ids come from an injectable factory). Two rules keep errors in their lane:

- client input that cannot be translated raises ``BadRequest``; the ingress renders it in
  the client's own error envelope;
- upstream output that is not OpenAI chat raises ``UpstreamProtocolError`` (or an in-band
  upstream error), which the ingress turns into the protocol's mid-stream error event.

This module holds what every translator shares: the OpenAI chat shapes they read, SSE
framing, and ``Translated``, the request body that says it was translated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.contract import Fields as Fields  # re-exported: every translator names it
from gateway.errors import BadRequest, UpstreamProtocolError
from gateway.wire import CompletionDetails as WireCompletionDetails
from gateway.wire import PromptDetails as WirePromptDetails
from gateway.wire import Usage

# Makes a fresh id with the given prefix ("msg_", "toolu_", "resp_"...); tests inject a counter.
IdFactory = Callable[[str], str]

encode = msgspec.json.Encoder().encode
# A JSON object decoded one level deep: what ``fields`` are everywhere in the gateway.
FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PATH = re.compile(r" - at `\$(.*)`$")


def new_id(prefix: str) -> str:
    """A random id in the style of the protocols' own (``msg_01AbC...``)."""
    return prefix + "".join(_ALNUM[b % 62] for b in os.urandom(24))


def raw(value: Any) -> msgspec.Raw:
    return msgspec.Raw(encode(value))


class Translated(dict[str, msgspec.Raw]):
    """An OpenAI chat body translated from another protocol (Anthropic Messages, Responses).

    Adapters receive it as the plain ``fields`` mapping (the forwarder hands it over as is).
    What adapters need to know travels explicitly on the request instead: the client's original
    body (``native``) and that the answer is translated (``translated``).
    """

    __slots__ = ("reasoning_history", "thinking_blocks", "volatile_prefix")

    def __init__(
        self,
        fields: Fields,
        volatile_prefix: bool = False,
        reasoning_history: bool = False,
        thinking_blocks: bool = False,
    ) -> None:
        super().__init__(fields)
        # The client opened its system prompt with per-request text (Claude Code's billing
        # line): gateway.translate.prefix looks for it past the first bytes too.
        self.volatile_prefix = volatile_prefix
        # Some assistant message carries reasoning_content (thinking the client sent back):
        # an adapter whose server does not read it removes it (adapters/reasoning_history.py).
        self.reasoning_history = reasoning_history
        # Some assistant message carries Anthropic's signed thinking (``thinking_blocks``):
        # only Anthropic reads it; every other adapter removes it (adapters/reasoning_history.py).
        self.thinking_blocks = thinking_blocks


# --- OpenAI chat as the translators read it ----------------------------------------------------
# Lenient on purpose: upstreams differ (null vs absent, extra fields, "reasoning" vs
# "reasoning_content"), and a field we do not read should never fail a reply.


class FunctionCall(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCall(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: FunctionCall | None = None


class ChatMessage(msgspec.Struct):
    """A reply's ``message`` or a chunk's ``delta``."""

    role: str | None = None
    content: str | None = None
    # llama.cpp, DeepSeek and vLLM say reasoning_content; OpenRouter and Groq say reasoning.
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    # Anthropic's signed or redacted thinking, carried through chat (gateway.translate.
    # reasoning_seal): what goes back to Anthropic unchanged on the next turn.
    thinking_blocks: list[dict[str, Any]] | None = None

    @property
    def thought(self) -> str | None:
        return self.reasoning_content or self.reasoning


class Choice(msgspec.Struct):
    index: int | None = 0
    message: ChatMessage | None = None
    delta: ChatMessage | None = None
    finish_reason: str | None = None


class PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None
    # Not OpenAI's: the Anthropic adapter reports cache writes here (the Responses API's name).
    cache_write_tokens: int | None = None


class CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class ChatUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptDetails | None = None
    completion_tokens_details: CompletionDetails | None = None

    @property
    def prompt(self) -> int:
        return self.prompt_tokens or 0

    @property
    def completion(self) -> int:
        return self.completion_tokens or 0

    @property
    def cached(self) -> int:
        details = self.prompt_tokens_details
        return (details.cached_tokens or 0) if details else 0

    @property
    def cache_writes(self) -> int:
        details = self.prompt_tokens_details
        return (details.cache_write_tokens or 0) if details else 0

    @property
    def reasoning(self) -> int:
        details = self.completion_tokens_details
        return (details.reasoning_tokens or 0) if details else 0

    def count_reasoning(self, chars: int) -> None:
        """Fill in reasoning_tokens, estimated from ``chars`` of thinking, if none were reported."""
        if chars and not self.reasoning:
            estimate = estimate_reasoning_tokens(chars, self.completion)
            self.completion_tokens_details = CompletionDetails(estimate)

    def wire(self, reasoning_chars: int = 0) -> Usage:
        """The usage the gateway records. ``reasoning_chars``: thinking seen in the answer, to
        estimate reasoning tokens from when the upstream counts none (llama.cpp does not)."""
        # Cached prompt tokens travel on: the usage row, metrics and prices need them.
        cached = self.cached
        details = WirePromptDetails(cached) if cached else None
        reasoning = self.reasoning or estimate_reasoning_tokens(reasoning_chars, self.completion)
        thought = WireCompletionDetails(reasoning) if reasoning else None
        return Usage(self.prompt, self.completion, self.prompt + self.completion, details, thought)


def estimate_reasoning_tokens(chars: int, completion: int) -> int:
    """Reasoning tokens guessed from the thinking's length, never more than the whole answer."""
    if chars <= 0:
        return 0
    estimate = -(-chars // 4)  # gateway.tokens.CHARS_PER_TOKEN, rounded up
    return min(estimate, completion) if completion > 0 else estimate


class Chat(msgspec.Struct):
    """A chat completion or one stream chunk; ``error`` is an in-band upstream error."""

    choices: list[Choice] | None = None
    usage: ChatUsage | None = None
    error: Any = None

    def first(self) -> Choice | None:
        for choice in self.choices or ():
            if not choice.index:
                return choice
        return None


_CHAT = msgspec.json.Decoder(Chat)


def plain_text(chunk: Chat) -> str | None:
    """The text of a chunk that carries nothing but more text (most chunks), else None."""
    choices = chunk.choices
    if not choices or chunk.usage is not None or len(choices) > 1:
        return None
    choice = choices[0]
    delta = choice.delta
    if (
        delta is None
        or not delta.content
        or choice.index
        or choice.finish_reason
        or delta.tool_calls
        or delta.reasoning_content
        or delta.reasoning
    ):
        return None
    return delta.content


def decode_chat(data: bytes) -> Chat:
    try:
        return _CHAT.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UpstreamProtocolError(
            f"upstream sent something that is not OpenAI chat: {exc}"
        ) from None


def error_message(error: Any) -> str:
    """The message of an in-band error, whatever shape the upstream gave it."""
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail")
        if isinstance(message, str):
            return message
    if isinstance(error, str):
        return error
    return "upstream reported an error mid-stream"


# --- SSE ---------------------------------------------------------------------------------------


def chunk_data(event: bytes) -> bytes | None:
    """The data of a one-line ``data: ...`` event (what OpenAI-style servers send), else None.

    The hot path of every translated stream: two byte tests and one slice.
    """
    if event.startswith(b"data: ") and event.find(b"\n", 6) == len(event) - 2:
        return event[6:-2]
    return None


def sse_fields(event: bytes) -> tuple[bytes, bytes]:
    """Split one complete SSE event into (event name, data); lines we do not know are skipped.

    llama.cpp reports stream errors on a non-standard ``error:`` line: that comes back as
    the event name ``error`` with the line's value as data.
    """
    simple = chunk_data(event)
    if simple is not None:
        return b"", simple
    name = b""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
        elif field == b"error":
            name, data = b"error", [value]
    return name, b"\n".join(data)


def sse(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


# --- client input --------------------------------------------------------------------------------


def decode_client(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """Decode a client body with ``decoder``; any failure is a 400 naming the field."""
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        what = message[: match.start()] if match else message
        path = match.group(1).lstrip(".") if match else ""
        if not path:
            raise BadRequest(f"invalid request body: {what}") from None
        raise BadRequest(f"{path}: {what}", param=path) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


# Struct fields typed Raw default to an empty Raw when absent: Raw cannot be in a union
# with None.


def tool_arguments(value: msgspec.Raw) -> str:
    """A tool call's input (kept as raw JSON) as OpenAI's arguments string."""
    return bytes(value).decode() if value else "{}"


def is_object(value: msgspec.Raw) -> bool:
    """Whether raw JSON is an object, without decoding it."""
    return bytes(memoryview(value)[:1]) == b"{"


def parse_arguments(arguments: str | None) -> dict[str, Any]:
    """OpenAI's arguments string as a JSON object (Anthropic and Codex want objects).

    Models do emit broken JSON; the call is kept (its id must still pair with its result)
    with the text under ``arguments`` rather than failing the whole conversation.
    """
    if not arguments or arguments.isspace():
        return {}
    try:
        value = msgspec.json.decode(arguments)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            # Double-encoded: a JSON string holding the JSON object (seen from small models).
            value = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}
