"""A ``store: true`` request's answer, kept once it is whole: the non-streamed body as it is, a
stream's final Response from its closing event."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from gateway.contract import WireProtocol
from gateway.responses_store.records import Owner, StoredResponse, response_head
from gateway.translate.responses_stream import ResponseStream

if TYPE_CHECKING:
    from gateway.errors import GatewayError
    from gateway.pipeline.call import Exchange
    from gateway.responses_store.store import ResponseStore
    from gateway.streaming import StreamTranslator
    from gateway.wire import ClientRequest, Usage

log = logging.getLogger("turnout.responses")

# The events that close a Response stream with an answer worth keeping (not response.failed).
_CLOSING = (b"event: response.completed\n", b"event: response.incomplete\n")


class _Closing(msgspec.Struct):
    response: msgspec.Raw


_CLOSING_EVENT = msgspec.json.Decoder(_Closing)


@dataclass(frozen=True, slots=True)
class Keeping:
    """What a stored request keeps besides its answer, and where."""

    # The gateway's store, a WebSocket's own (gateway/api/responses_socket.py), or both.
    stores: tuple[ResponseStore, ...]
    owner: Owner
    previous_id: str | None
    model: str
    # The request's own input items, as JSON.
    input: bytes
    # The request asked the upstream to store it too (``store`` not false): only then can a
    # continuation pass a natively answered response's id on to its provider.
    upstream_keeps: bool = True

    def keep(self, response: bytes, upstream: str | None = None) -> None:
        """Store one Response object; a failure to is logged, never the request's failure.
        ``upstream``: the provider that answered it natively (``StoredResponse.upstream``)."""
        try:
            response_id, status = response_head(response)
        except msgspec.DecodeError:
            log.exception("stored responses: an answer that is not a Response was not kept")
            return
        if status == "failed":
            return
        record = StoredResponse(
            response_id,
            self.owner,
            time.time(),
            self.previous_id,
            self.model,
            self.input,
            response,
            upstream=upstream if self.upstream_keeps else None,
        )
        for store in self.stores:
            store.put(record)


class StoringExchange:
    """A Responses exchange whose whole answer is kept (``Exchange`` in gateway/pipeline/call.py)."""

    __slots__ = ("_inner", "_keeping", "request")

    def __init__(self, inner: Exchange, keeping: Keeping) -> None:
        self._inner = inner
        self._keeping = keeping
        self.request: ClientRequest = inner.request

    def reply(self, body: bytes, protocol: WireProtocol) -> tuple[bytes, Usage | None]:
        answer, usage = self._inner.reply(body, protocol)
        self._keeping.keep(answer, _upstream(self.request, protocol))
        return answer, usage

    def stream(self) -> StoringStream:
        return StoringStream(self._inner.stream(), self._keeping, self.request)


def _upstream(request: ClientRequest, protocol: WireProtocol) -> str | None:
    """The provider that answered in Responses' own protocol, or None (a translated answer)."""
    native = request.native
    if native is None or protocol is not WireProtocol.RESPONSES:
        return None
    return native.taker


class StoringStream:
    """A Response stream that keeps the final Response once the stream closes with one.

    Per event it adds one attribute read and a call: the work is in ``finish``, once.
    """

    __slots__ = ("_inner", "_keeping", "_protocol", "_request", "usage")

    def __init__(self, inner: StreamTranslator, keeping: Keeping, request: ClientRequest) -> None:
        self._inner = inner
        self._keeping = keeping
        self._request = request
        self._protocol = WireProtocol.OPENAI
        # The inner stream's, copied when it closes (the only time a Response stream sets it).
        self.usage: Usage | None = None

    def begin(self, protocol: WireProtocol) -> None:
        self._protocol = protocol
        self._inner.begin(protocol)

    def feed(self, event: bytes) -> bytes:
        return self._inner.feed(event)

    def finish(self) -> list[bytes]:
        pieces = self._inner.finish()
        self.usage = self._inner.usage
        response = final_response(pieces)
        if response is None and isinstance(self._inner, ResponseStream):
            response = self._inner.native_final  # relayed as the upstream sent it
        if response is not None:
            self._keeping.keep(response, _upstream(self._request, self._protocol))
        return pieces

    def fail(self, error: GatewayError) -> bytes:
        out = self._inner.fail(error)
        self.usage = self._inner.usage
        return out


def final_response(pieces: list[bytes]) -> bytes | None:
    """The Response object in the closing event among a stream's last ``pieces``.

    Only the pieces from the closing event on are joined: the ones before repeat the answer's
    text (``ResponseStream`` keeps it one shared piece), and need not be copied again.
    """
    for start in range(len(pieces) - 1, -1, -1):
        piece = pieces[start]
        at = max(piece.rfind(marker) for marker in _CLOSING)
        if at < 0:
            continue
        tail = b"".join(pieces[start:]) if start < len(pieces) - 1 else piece
        data = tail.find(b"data: ", at)
        if data < 0:
            return None
        event = tail[data + 6 :].rstrip(b"\n")
        try:
            return bytes(_CLOSING_EVENT.decode(event).response)
        except msgspec.DecodeError:
            return None
    return None
