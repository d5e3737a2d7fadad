"""The assistant's text of an answer, kept for ``after_response`` when a plugin asks for it.

Only requests where some plugin set ``capture_reply`` pay for this: a whole answer is decoded
once more, a stream costs one small decode per chunk. What is read is OpenAI chat, as the
adapters produce it, whatever protocol the client is answered in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.errors import UpstreamProtocolError
from gateway.translate import Choice, chunk_data, decode_chat

if TYPE_CHECKING:
    from gateway.contract import WireProtocol
    from gateway.errors import GatewayError
    from gateway.streaming import StreamTranslator
    from gateway.wire import Usage


def _first(data: bytes) -> Choice | None:
    try:
        return decode_chat(data).first()
    except UpstreamProtocolError:
        # Not chat: the relay reports that to the client; there is just no text to keep.
        return None


def reply_text(body: bytes) -> str | None:
    """The first choice's text of a whole chat completion; None when it has none."""
    choice = _first(body)
    message = choice.message if choice is not None else None
    return message.content if message is not None else None


class CapturingStream:
    """A stream translator that also keeps the text of the content deltas it relays."""

    __slots__ = ("_inner", "_parts")

    def __init__(self, inner: StreamTranslator) -> None:
        self._inner = inner
        self._parts: list[str] = []

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._inner.usage = value

    def begin(self, protocol: WireProtocol) -> None:
        self._inner.begin(protocol)

    def feed(self, event: bytes) -> bytes:
        # Byte test first: usage-only chunks, keep-alives and [DONE] carry no content.
        if b'"content"' in event:
            data = chunk_data(event)
            choice = _first(data) if data is not None else None
            delta = choice.delta if choice is not None else None
            if delta is not None and delta.content:
                self._parts.append(delta.content)
        return self._inner.feed(event)

    def finish(self) -> list[bytes]:
        return self._inner.finish()

    def fail(self, error: GatewayError) -> bytes:
        return self._inner.fail(error)

    def text(self) -> str:
        return "".join(self._parts)
