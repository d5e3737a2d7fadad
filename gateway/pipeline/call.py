"""One request's record (``Call``) and what a client protocol brings to the pipeline (``Dialect``)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.forwarder import Trace
from gateway.identity import ANONYMOUS, Identity

if TYPE_CHECKING:
    from gateway.asgi import Scope
    from gateway.config.upstreams import Target
    from gateway.contract import WireProtocol
    from gateway.errors import GatewayError
    from gateway.plugins.capture import CapturingStream
    from gateway.plugins.context import Forwarding, RequestContext
    from gateway.ratelimit.admission import Admission
    from gateway.streaming import StreamTranslator
    from gateway.wire import ClientRequest, Usage


# Request ids: 24 hex digits, a random per-process prefix then a counter. Unique without a
# getrandom() syscall per request (os.urandom was one of the larger items in the hot path's
# profile); the prefix keeps ids from two processes, or two runs, apart.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


class Exchange(Protocol):
    """A decoded request plus how to answer it in the client's protocol."""

    request: ClientRequest

    def reply(self, body: bytes, protocol: WireProtocol) -> tuple[bytes, Usage | None]: ...

    def stream(self) -> StreamTranslator: ...


def exchange_reply(
    exchange: Exchange, body: bytes, protocol: WireProtocol, target: Target | None
) -> tuple[bytes, Usage | None]:
    return exchange.reply(body, protocol)


@dataclass(frozen=True, slots=True)
class Dialect:
    """One client protocol, as the shared pipeline needs it."""

    # Label for metrics and the usage log ("chat", "messages", "responses", ...).
    route: str
    # Decodes and translates a request body; raises BadRequest. The scope is the caller's
    # (headers and peer): an HTTP request's, or the WebSocket's the chat arrived on.
    prepare: Callable[[bytes, Scope], Exchange]
    # The protocol's error envelope for an error before the stream starts.
    error_body: Callable[[GatewayError, str], bytes]
    # Sent every keepalive interval while the upstream has not said anything yet.
    keepalive: bytes
    # Header that carries the request id in this protocol, besides x-request-id.
    id_header: bytes | None = None
    # Renders a whole (non-streamed) answer, told which target served it: seed 004's answer
    # names its provider and upstream model. Most protocols use the exchange's own reply.
    # ``protocol`` is what the upstream answered in (``UpstreamReply.protocol``).
    render: Callable[[Exchange, bytes, WireProtocol, Target | None], tuple[bytes, Usage | None]] = (
        exchange_reply
    )


class Call:
    """What one request learned on its way through: for headers, metrics and its usage row.

    The one per-request record: the forwarder's ``Trace`` (attempts, target, engine lease) is
    part of it, and so is what admission granted and what plugins asked for.
    """

    __slots__ = (
        "admission",
        "body_bytes",
        "capture",
        "chunks",
        "forwarder",
        "hooked",
        "identity",
        "model",
        "reply_text",
        "request_id",
        "sent_bytes",
        "started",
        "status",
        "stream",
        "trace",
        "ts",
        "ttft",
        "usage",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.ts = time.time()
        self.started = time.perf_counter()
        self.identity: Identity = ANONYMOUS
        self.model = "-"
        self.status = 500
        self.stream = False
        self.trace = Trace()
        self.usage: Usage | None = None
        self.ttft: float | None = None
        self.admission: Admission | None = None
        # The forwarder that answers: the gateway's own, or a plugin's stand-in for it (the
        # tools plugin's agent loop).
        self.forwarder: Forwarding | None = None
        self.body_bytes = 0
        self.sent_bytes = 0
        # Upstream stream events relayed: what a cut-short stream's completion is estimated from.
        self.chunks = 0
        # Set when plugins' request hooks ran; the answer's text only when one asked for it.
        self.hooked: RequestContext | None = None
        self.capture: CapturingStream | None = None
        self.reply_text: str | None = None
