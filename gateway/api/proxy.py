"""OpenAI's own endpoints: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``.

The passthrough dialect of the shared pipeline (gateway/pipeline/): bodies and stream
events go out as the adapter produced them. Per event the translator does byte tests only (is
it the usage chunk, is it ``[DONE]``); the usage chunk is always requested upstream, so tokens
are never lost, and dropped again when the client did not ask for it.
"""

from __future__ import annotations

import msgspec

from gateway.asgi import Scope
from gateway.contract import Operation, WireProtocol
from gateway.errors import (
    ErrorBody,
    ErrorEnvelope,
    GatewayError,
    UpstreamProtocolError,
    openai_envelope,
)
from gateway.pipeline.call import Dialect
from gateway.pipeline.endpoint import EndpointFactory, ingress
from gateway.streaming import KEEPALIVE
from gateway.wire import ClientRequest, Usage, decode_request, usage_of

DONE = b"data: [DONE]"
_encode = msgspec.json.Encoder().encode


class PassthroughStream:
    __slots__ = ("_done", "_include_usage", "usage")

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._done = False
        self.usage: Usage | None = None

    def begin(self, protocol: WireProtocol) -> None:
        """OpenAI clients' requests carry no native body: the answer is always OpenAI's."""

    def feed(self, event: bytes) -> bytes:
        if event.startswith(DONE):
            self._done = True
            return event
        # Byte test first: most chunks carry no usage (or "usage":null) and skip the decode.
        if b'"usage"' in event and b'"usage":null' not in event and event.startswith(b"data: "):
            usage = usage_of(event[6:])
            if usage is not None:
                self.usage = usage
                if not self._include_usage and b'"choices":[]' in event:
                    return b""
        return event

    def finish(self) -> list[bytes]:
        if not self._done:
            # Every OpenAI-compatible server ends with [DONE]; without it the answer was cut.
            raise UpstreamProtocolError("upstream stream ended without [DONE]")
        return []

    def fail(self, error: GatewayError) -> bytes:
        """In-band, as OpenAI's SDKs expect errors after the stream started."""
        envelope = ErrorEnvelope(ErrorBody(error.message, error.type, error.param, error.code))
        return b"data: " + _encode(envelope) + b"\n\n"


class Passthrough:
    __slots__ = ("request",)

    def __init__(self, request: ClientRequest) -> None:
        self.request = request

    def reply(
        self, body: bytes, protocol: WireProtocol = WireProtocol.OPENAI
    ) -> tuple[bytes, Usage | None]:
        return body, usage_of(body)

    def stream(self) -> PassthroughStream:
        return PassthroughStream(self.request.include_usage)


def _error_body(error: GatewayError, request_id: str) -> bytes:
    return openai_envelope(error)


def _dialect(op: Operation, route: str) -> Dialect:
    def prepare(body: bytes, scope: Scope) -> Passthrough:
        return Passthrough(decode_request(op, body))

    return Dialect(route=route, prepare=prepare, error_body=_error_body, keepalive=KEEPALIVE)


CHAT = _dialect(Operation.CHAT, "chat")
COMPLETIONS = _dialect(Operation.COMPLETIONS, "completions")
EMBEDDINGS = _dialect(Operation.EMBEDDINGS, "embeddings")


# Path -> endpoint for every forwarded OpenAI operation.
ENDPOINTS: dict[str, EndpointFactory] = {
    "/v1/chat/completions": ingress(CHAT),
    "/v1/completions": ingress(COMPLETIONS),
    "/v1/embeddings": ingress(EMBEDDINGS),
}
