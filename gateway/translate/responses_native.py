"""A Responses request for an upstream that speaks Responses itself (OpenAI: ``responses_api``).

The client's body goes on as it came (``gateway.contract.Native``) and the answer comes back
unchanged: a Response object, or its event stream. Turnout only reads the usage on the way
(for the usage log and metrics) and the final Response (for ``store: true``).

Not every body can go: one carrying turnout's own opaque items (reasoning or compaction sealed
by turnout, ``turnout.r1.``/``turnout.c1.``) means nothing to OpenAI, which would refuse it;
such a request is translated to chat as before, where those items are understood.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from gateway.contract import Native, WireProtocol
from gateway.errors import GatewayError
from gateway.translate import encode, sse
from gateway.wire import CompletionDetails, PromptDetails, Usage

_NO_HEADERS: dict[str, str] = {}
_TURNOUT_SEALED = "turnout."
# The events that end a Response stream; the first two carry an answer worth keeping.
_KEPT = (b"response.completed", b"response.incomplete")
_FAILED = b"response.failed"


def native_request(
    body: bytes, continues: bool, sealed: Iterable[str | None], only: str | None
) -> Native | None:
    """The body as a native Responses request, or None when it must be translated.

    ``continues``: it has a ``previous_response_id``; ``only``: the provider that answered that
    response natively (the id is that provider's), which alone may take the body as it is.
    ``sealed``: the input items' ``encrypted_content``.
    """
    if continues and only is None:
        return None  # continues a conversation no upstream holds whole: replayed as chat
    if any(s is not None and s.startswith(_TURNOUT_SEALED) for s in sealed):
        return None
    return Native(WireProtocol.RESPONSES, body, _NO_HEADERS, only=only)


class _Details(msgspec.Struct):
    cached_tokens: int | None = 0
    reasoning_tokens: int | None = 0


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None


class _Response(msgspec.Struct):
    usage: _Usage | None = None


class _Closing(msgspec.Struct):
    response: msgspec.Raw


_RESPONSE = msgspec.json.Decoder(_Response)
_CLOSING = msgspec.json.Decoder(_Closing)


def native_usage(body: bytes) -> Usage | None:
    """A Response object's ``usage``, in the gateway's (chat) terms."""
    try:
        usage = _RESPONSE.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if usage is None:
        return None
    inputs, outputs = usage.input_tokens_details, usage.output_tokens_details
    return Usage(
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens or usage.input_tokens + usage.output_tokens,
        PromptDetails(inputs.cached_tokens) if inputs else None,
        CompletionDetails(outputs.reasoning_tokens) if outputs else None,
    )


class NativeEvents:
    """A Responses event stream relayed as the upstream sent it, read for its end only."""

    __slots__ = ("_count", "final", "usage")

    def __init__(self) -> None:
        self._count = 0
        self.usage: Usage | None = None
        # The final Response of a stream that completed (what ``store: true`` keeps).
        self.final: bytes | None = None

    def feed(self, event: bytes) -> bytes:
        self._count += 1
        head = event[:64]
        kept = _KEPT[0] in head or _KEPT[1] in head
        if kept or _FAILED in head:
            self._closing(event, kept)
        return event

    def _closing(self, event: bytes, kept: bool) -> None:
        at = event.find(b"data:")
        if at < 0:
            return
        try:
            response = bytes(_CLOSING.decode(event[at + 5 :].strip()).response)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self.usage = native_usage(response)
        if kept:
            self.final = response

    def finish(self) -> list[bytes]:
        return []

    def fail(self, error: GatewayError) -> bytes:
        """The Responses stream's own ``error`` event: the upstream's stream broke off."""
        data = {
            "type": "error",
            "code": "server_error" if error.status >= 500 else "invalid_prompt",
            "message": error.message,
            "param": None,
            "sequence_number": self._count,
        }
        return sse(b"error", encode(data))
