"""Responses over a WebSocket on ``/v1/responses``, as Codex speaks it to a provider that sets
``supports_websockets``.

Client to server, one JSON text frame each::

    {"type": "response.create", <the body of a POST /v1/responses>}
    {"type": "response.processed", "response_id": "..."}        an acknowledgement; ignored

A ``response.create`` with ``"generate": false`` (Codex's warm-up of a new socket) asks no model:
it is answered at once with ``response.created`` and ``response.completed`` (no output), and
kept, so the next request continues from its input by id.

Server to client: every event of the Responses stream as its own text frame (the JSON an SSE
``data:`` line would carry), ending with ``response.completed`` (or ``response.incomplete`` /
``response.failed``); a request refused before its stream starts is
``{"type": "error", "status": <HTTP status>, "error": {<OpenAI's error object>}}``.

One response at a time per socket (a ``response.create`` while one runs is an error). Each
runs through the very pipeline of ``POST /v1/responses`` with the turn as its ``Client``: auth
against the upgrade's headers, limits, fallback, metrics and the usage row as over HTTP.
Closing the socket cancels the running response as a disconnecting HTTP client does (status
499 in its usage row).

Codex sends ``store: false`` here and continues with ``previous_response_id`` plus only the new
items, relying on the server to remember the socket's earlier turns. So every turn on a socket
is kept in a store of the socket's own, in memory, for the socket's life (and in the gateway's
store as well when ``store`` is true); a continuation finds its history there first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.api.socket_client import SocketClient
from gateway.api.websocket import error_object, sse_data
from gateway.asgi import Headers, Receive, Scope, Send
from gateway.config.responses import Responses
from gateway.db import MEMORY
from gateway.errors import BadRequest, GatewayError, Unfetched
from gateway.nesting import check_depth
from gateway.pipeline.call import new_request_id
from gateway.responses_store.store import ResponseStore

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.pipeline.run import Pipeline

log = logging.getLogger("turnout.responses")

# The key of a socket's own store in the scope its responses run with (read by
# gateway/api/responses.py's ``StatefulResponses``).
SOCKET_STORE = "turnout.responses_socket_store"
# Close code for a refused upgrade, in the 4000s application range (4000 + HTTP 403).
REFUSED = 4403
# A socket's own turns, in memory: enough for a long Codex session, bounded all the same.
_SOCKET_TURNS = Responses(cache_bytes=64 * 1024 * 1024, max_bytes=64 * 1024 * 1024)

_decode_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_TRUE = msgspec.Raw(b"true")


def _error_event(error: GatewayError) -> bytes:
    body = {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
    return msgspec.json.encode({"type": "error", "status": error.status, "error": body})


class ResponsesSocket:
    """One connection: reads ``response.create`` messages, runs each through the pipeline."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        pipeline: Pipeline,
        auth: Authenticator,
        body_limit: int,
        warm_up: Callable[[bytes, Scope], bytes],
    ) -> None:
        self._receive = receive
        self._send = send
        self._pipeline = pipeline
        self._auth = auth
        self._warm_up = warm_up
        self.body_limit = body_limit
        self.store = ResponseStore(_SOCKET_TURNS, MEMORY)
        self.scope: Scope = {**scope, SOCKET_STORE: self.store}
        self._turn: Turn | None = None
        self._write_lock = asyncio.Lock()
        self.closed = False
        # For the closing log line: responses run, how many continued an earlier one by id, and
        # warm-ups answered without a model.
        self.created = 0
        self.continued = 0
        self.warm_ups = 0

    async def serve(self) -> None:
        await self._receive()  # websocket.connect
        if self._auth.embedded:
            try:
                self._auth.check_local_request(self.scope)
            except GatewayError as exc:
                await self._send(
                    {"type": "websocket.close", "code": REFUSED, "reason": exc.message[:120]}
                )
                return
        await self._send({"type": "websocket.accept"})
        client = self.scope.get("client")
        log.info("responses websocket opened by %s", client[0] if client else "?")
        try:
            while True:
                message = await self._receive()
                if message["type"] == "websocket.disconnect":
                    break
                text: str | None = message.get("text")
                await self._dispatch(
                    text.encode() if text is not None else message.get("bytes") or b""
                )
        finally:
            self.closed = True
            turn = self._turn
            if turn is not None:
                turn.cancel()
                if turn.task is not None:
                    await asyncio.gather(turn.task, return_exceptions=True)
            log.info(
                "responses websocket closed: %d responses, %d continued by previous_response_id, "
                "%d warm-ups",
                self.created,
                self.continued,
                self.warm_ups,
            )

    async def _dispatch(self, raw: bytes) -> None:
        try:
            fields = _decode_object(check_depth(raw))
            kind = msgspec.json.decode(fields.pop("type", msgspec.Raw(b'""')))
        except msgspec.DecodeError as exc:
            await self.write(_error_event(BadRequest(f"unreadable message: {exc}")))
            return
        except BadRequest as exc:
            await self.write(_error_event(exc))
            return
        if kind == "response.create":
            await self._create(fields)
        elif kind != "response.processed":
            error = BadRequest(
                f"unknown message type {kind!r}; expected response.create", param="type"
            )
            await self.write(_error_event(error))

    async def _create(self, fields: dict[str, msgspec.Raw]) -> None:
        if self._turn is not None:
            await self.write(_error_event(BadRequest("a response is still running on this socket")))
            return
        if bytes(fields.get("generate", b"null")) == b"false":
            await self._warm(msgspec.json.encode(fields))
            return
        # Always streamed: a socket has no other way to answer.
        fields["stream"] = _TRUE
        self.created += 1
        if bytes(fields.get("previous_response_id", b"null")) != b"null":
            self.continued += 1
        turn = self._turn = Turn(self, msgspec.json.encode(fields))
        turn.task = asyncio.get_running_loop().create_task(turn.run(self._pipeline))

    async def _warm(self, body: bytes) -> None:
        """Codex's warm-up (``generate: false``): the full prompt, no answer wanted. Running it
        on the model would cost a whole generation, and its answer would then be replayed as a
        turn of the conversation that never happened."""
        try:
            try:
                response = self._warm_up(body, self.scope)
            except Unfetched as unfetched:
                await unfetched.fetch()
                response = self._warm_up(body, self.scope)
        except GatewayError as exc:
            await self.write(_error_event(exc))
            return
        self.warm_ups += 1
        for seq, kind in enumerate((b"response.created", b"response.completed")):
            head = b'{"type":"%s","sequence_number":%d,"response":' % (kind, seq)
            await self.write(head + response + b"}")

    def ended(self, turn: Turn) -> None:
        if self._turn is turn:
            self._turn = None

    async def write(self, data: bytes) -> None:
        """Send one frame; never raises, since a response must finish even when the socket is
        gone (its usage row is still written)."""
        if self.closed:
            return
        try:
            async with self._write_lock:
                await self._send({"type": "websocket.send", "text": data.decode()})
        except Exception:
            self.closed = True


class Turn(SocketClient):
    """One response on a socket, as the pipeline's ``Client``: a body in, frames out."""

    __slots__ = ("_socket",)

    def __init__(self, socket: ResponsesSocket, body: bytes) -> None:
        super().__init__(socket.scope, body, socket.body_limit)
        self._socket = socket

    async def run(self, pipeline: Pipeline) -> None:
        try:
            await pipeline.run(self, new_request_id())
        except Exception:
            log.exception("a response on the /v1/responses socket failed inside the gateway")
        finally:
            self._socket.ended(self)

    # --- the pipeline's side (gateway/pipeline/client.py) ------------------------------------

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        if status >= 400:
            frame: Any = {"type": "error", "status": status, "error": error_object(body)}
            await self._socket.write(msgspec.json.encode(frame))
            return
        # Streams are forced on, so only a plugin's whole answer lands here.
        await self._socket.write(b'{"type":"response.completed","response":' + body + b"}")

    async def start(self, headers: Headers) -> None:
        self.started = True

    async def write(self, data: bytes) -> None:
        self._buffer += data
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            frame = sse_data(event)
            if frame is not None:  # None: a keep-alive comment; the socket has its own pings
                await self._socket.write(frame)

    async def end(self) -> None:
        if self._buffer:
            await self.write(b"\n\n")
