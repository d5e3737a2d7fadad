"""``/v1/chat/ws``: OpenAI chat over one WebSocket, many concurrent streams, each cancellable.

Protocol: JSON text frames (binary frames holding UTF-8 JSON are read the same way).

Client to server::

    {"type": "auth", "key": "<api key>"}                      optional, see Auth below
    {"type": "chat", "id": "<client id>", "request": {<OpenAI chat completions body>}}
    {"type": "cancel", "id": "<client id>"}

Server to client::

    {"type": "authenticated"}                                   the answer to a good auth message
    {"type": "chunk", "id": "<client id>", "data": {<chat.completion.chunk>}}
    {"type": "response", "id": "<client id>", "data": {<chat.completion>}}
    {"type": "done", "id": "<client id>", "request_id": "<x-request-id>"}
    {"type": "error", "id": "<client id>" | null, "status": 429,
     "error": {"message": ..., "type": ..., "param": ..., "code": ...}}
    {"type": "cancelled", "id": "<client id>"}

- ``request`` is exactly what ``POST /v1/chat/completions`` takes; ``stream`` defaults to true
  here. Each ``chunk`` carries the very JSON a ``data:`` line of the SSE answer would, including
  the usage chunk when ``stream_options.include_usage`` asks for it; ``data: [DONE]`` becomes
  ``done``. With ``"stream": false`` the whole completion comes as one ``response``, then ``done``.
- Every chat ends with exactly one of ``done``, ``error`` or ``cancelled``; after it the id may
  be used again. ``error`` carries OpenAI's error object; ``status`` is the HTTP status the same
  request would have got, and is absent when the error came after the stream started (the HTTP
  answer would have been a 200 with the error in-band). ``id`` is null for a message that could
  not be read.
- ``cancel`` ends that chat as a disconnecting HTTP client would: the upstream request is
  closed, the usage row says status 499, and ``cancelled`` is the last message for that id. A
  cancel for an id that already ended is ignored. Closing the socket cancels every open chat.
- Chats on one socket run concurrently (up to 64 open at once); their messages interleave.
- Auth: the same keys as HTTP, either on the upgrade request (``Authorization: Bearer`` or
  ``x-api-key``) or, for browsers, which cannot set headers, in an ``auth`` message that applies
  to every later chat on the socket. Keys are checked per chat, like per HTTP request. A keyless
  gateway (embedded mode) refuses upgrades a web page could have made: cross-site ones (an
  ``Origin`` that is not the ``Host``) and those addressed to a name that is not this machine's
  (DNS rebinding, see gateway/hosts.py), with an HTTP 403 and OpenAI's error envelope, so a web
  page you visit cannot use your local models.

Each chat runs through the very pipeline that serves ``POST /v1/chat/completions``
(gateway/pipeline/, handed over by ``create_app``), with the chat as its ``Client``: the body
comes from the message, the answer goes back as socket messages, and a cancel cancels the
chat's task as a lost connection cancels an HTTP request's. Auth (against the socket's own
headers, or the key of an ``auth`` message), permissions, budgets, rate limits, fallback, engine
swaps with their keep-alives (dropped here), metrics and the usage row all apply unchanged. The
relay writes SSE events, as it does for HTTP; the cost here is one SSE frame parse per chunk: a
byte split, no JSON decode (``data`` is spliced in as raw JSON).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import msgspec
from litestar import WebSocket, websocket
from litestar.di import NamedDependency
from litestar.handlers import WebsocketRouteHandler
from litestar.types import WebSocketResponseBodyEvent, WebSocketResponseStartEvent
from msgspec import UNSET, UnsetType

from gateway.api.socket_client import SocketClient
from gateway.asgi import Headers, Message, Scope
from gateway.errors import BadRequest, GatewayError, Unauthorized, openai_envelope
from gateway.nesting import check_depth
from gateway.pipeline.call import new_request_id
from gateway.pipeline.run import Pipeline
from gateway.state import GatewayState

log = logging.getLogger("turnout.websocket")

PATH = "/v1/chat/ws"
MAX_OPEN = 64
# Close code for a refused upgrade, in the 4000s application range (4000 + HTTP 403).
REFUSED = 4403

# Upgrade headers that describe the socket, not a chat request; everything else (keys, agent
# and project headers, user agent) travels with every chat.
_SOCKET_HEADERS = frozenset(
    {
        b"connection",
        b"upgrade",
        b"content-length",
        b"content-type",
        b"transfer-encoding",
        b"x-request-id",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
    }
)
_KEY_HEADERS = frozenset({b"authorization", b"x-api-key"})


class Incoming(msgspec.Struct):
    type: str
    id: str | None = None
    # Kept as raw bytes: it becomes the HTTP body without being decoded and encoded again.
    request: msgspec.Raw = msgspec.Raw()
    key: str | None = None


class Outgoing(msgspec.Struct):
    type: str
    id: str | None
    data: msgspec.Raw | UnsetType = UNSET
    request_id: str | UnsetType = UNSET
    status: int | UnsetType = UNSET
    error: msgspec.Raw | UnsetType = UNSET


_decode_incoming = msgspec.json.Decoder(Incoming).decode
_decode_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode
_TRUE = msgspec.Raw(b"true")


def chat_socket(chat: Callable[[], Pipeline]) -> WebsocketRouteHandler:
    """The ``/v1/chat/ws`` handler, running chats through ``chat()``: the pipeline of
    /v1/chat/completions (which exists once the lifespan built it)."""

    @websocket(PATH)
    async def chat_over_websocket(
        socket: WebSocket[Any, Any, Any], gateway: NamedDependency[GatewayState]
    ) -> None:
        if gateway.auth.embedded:
            try:
                gateway.auth.check_local_request(cast(Scope, socket.scope))
            except GatewayError as exc:
                await refuse(socket, exc)
                return
        await socket.accept()
        await ChatSocket(socket, chat(), gateway).serve()

    return chat_over_websocket


async def refuse(socket: WebSocket[Any, Any, Any], error: GatewayError) -> None:
    """Deny the upgrade with an HTTP answer carrying the error envelope where the server can
    send one (ASGI's websocket.http.response extension), else close with ``REFUSED``."""
    if "websocket.http.response" not in (socket.scope.get("extensions") or {}):
        await socket.close(code=REFUSED, reason=error.message[:120])
        return
    await socket.receive()  # websocket.connect
    body = openai_envelope(error)
    start: WebSocketResponseStartEvent = {
        "type": "websocket.http.response.start",
        "status": error.status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
    }
    end: WebSocketResponseBodyEvent = {
        "type": "websocket.http.response.body",
        "body": body,
        "more_body": False,
    }
    await socket.send(start)
    await socket.send(end)


class ChatSocket:
    """One connection: reads messages, runs each chat as a task, writes their messages."""

    def __init__(
        self, socket: WebSocket[Any, Any, Any], pipeline: Pipeline, gateway: GatewayState
    ) -> None:
        self._socket = socket
        self._pipeline = pipeline
        self._gateway = gateway
        scope = self._scope = cast(Scope, socket.scope)
        self._headers: Headers = [
            (bytes(k), bytes(v)) for k, v in scope["headers"] if k not in _SOCKET_HEADERS
        ]
        # Open chats by client id; a chat leaves this dict when its last message is sent.
        self._open: dict[str, Chat] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # One writer at a time, so frames of concurrent chats never interleave mid-message.
        self._write_lock = asyncio.Lock()
        self.closed = False

    async def serve(self) -> None:
        try:
            while True:
                message: Message = cast(Message, await self._socket.receive())
                if message["type"] == "websocket.disconnect":
                    break
                text: str | None = message.get("text")
                await self._dispatch(
                    text.encode() if text is not None else message.get("bytes", b"")
                )
        finally:
            self.closed = True
            # A socket that closes cancels what it started, as an HTTP disconnect would.
            for chat in list(self._open.values()):
                chat.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _dispatch(self, raw: bytes) -> None:
        try:
            incoming = _decode_incoming(check_depth(raw))
        except msgspec.DecodeError as exc:
            await self.error(None, BadRequest(f"unreadable message: {exc}"))
            return
        except BadRequest as exc:  # nested too deeply to decode: refused, the socket stays open
            await self.error(None, exc)
            return
        if incoming.type == "chat":
            await self._start(incoming)
        elif incoming.type == "cancel":
            chat = self._open.get(incoming.id or "")
            if chat is not None:
                chat.cancel()
        elif incoming.type == "auth":
            await self._authenticate(incoming.key)
        else:
            await self.error(
                incoming.id,
                BadRequest(
                    f"unknown message type {incoming.type!r}; expected chat, cancel or auth",
                    param="type",
                ),
            )

    async def _start(self, incoming: Incoming) -> None:
        chat_id = incoming.id
        if not chat_id:
            await self.error(None, BadRequest("a chat message needs an id", param="id"))
            return
        if not incoming.request:
            await self.error(chat_id, BadRequest("a chat message needs a request", param="request"))
            return
        if chat_id in self._open:
            await self.error(chat_id, BadRequest(f"chat {chat_id!r} is still open", param="id"))
            return
        if len(self._open) >= MAX_OPEN:
            await self.error(chat_id, BadRequest(f"at most {MAX_OPEN} open chats per socket"))
            return
        try:
            body = streaming_by_default(bytes(incoming.request))
        except msgspec.DecodeError:
            await self.error(
                chat_id, BadRequest("request: expected a JSON object", param="request")
            )
            return
        chat = self._open[chat_id] = Chat(self, chat_id, self._chat_scope(), body)
        chat.task = asyncio.get_running_loop().create_task(chat.run(self._pipeline))
        self._tasks.add(chat.task)
        chat.task.add_done_callback(self._tasks.discard)

    async def _authenticate(self, key: str | None) -> None:
        if not key:
            await self.error(None, Unauthorized("an auth message needs a key", param="key"))
            return
        headers = [(k, v) for k, v in self._headers if k not in _KEY_HEADERS]
        headers.append((b"authorization", b"Bearer " + key.encode("latin-1", "replace")))
        try:
            self._gateway.auth.identify({**self._scope, "headers": headers})
        except GatewayError as exc:
            await self.error(None, exc)
            return
        self._headers = headers
        await self.write(Outgoing("authenticated", None))

    def _chat_scope(self) -> Scope:
        """The socket's own scope, with the headers chats carry (an auth message's key)."""
        return {**self._scope, "headers": self._headers}

    @property
    def body_limit(self) -> int:
        return self._gateway.config.server.max_body_bytes

    def ended(self, chat_id: str) -> None:
        self._open.pop(chat_id, None)

    async def error(self, chat_id: str | None, error: GatewayError) -> None:
        body = msgspec.json.encode(
            {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
        )
        await self.write(Outgoing("error", chat_id, status=error.status, error=msgspec.Raw(body)))

    async def write(self, message: Outgoing) -> None:
        """Send one message; never raises, since a chat must finish even when the socket is gone."""
        if self.closed:
            return
        data = _encode(message)
        try:
            async with self._write_lock:
                await self._socket.send_data(data.decode(), mode="text")
        except Exception:
            # The client is gone; serve() sees the disconnect and cancels every chat.
            self.closed = True


def streaming_by_default(body: bytes) -> bytes:
    """The chat body with ``"stream": true`` unless the client said otherwise."""
    fields = _decode_object(body)
    if "stream" in fields:
        return body
    fields["stream"] = _TRUE
    return _encode(fields)


class Chat(SocketClient):
    """One chat on a socket, as the pipeline's ``Client``: a body in, socket messages out."""

    __slots__ = ("_socket", "ended", "id", "request_id")

    def __init__(self, socket: ChatSocket, chat_id: str, scope: Scope, body: bytes) -> None:
        super().__init__(scope, body, socket.body_limit)
        self._socket = socket
        self.id = chat_id
        self.request_id: str | None = None
        self.ended = False

    async def run(self, pipeline: Pipeline) -> None:
        try:
            await pipeline.run(self, new_request_id())
        except Exception:
            log.exception("chat %r on %s failed inside the gateway", self.id, PATH)
        if self.ended:
            return
        if self._cancelled:
            await self._end(Outgoing("cancelled", self.id))
        else:
            # The pipeline always answers; this is only reached through a bug in it.
            error = GatewayError("internal gateway error; see the gateway log")
            self._end_now()
            await self._socket.error(self.id, error)

    # --- the pipeline's side (gateway/pipeline/client.py) -------------------------------------

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        self._note_request_id(headers)
        if self.ended:
            return
        if status >= 400:
            await self._fail(body, status=status)
            return
        await self._socket.write(Outgoing("response", self.id, data=msgspec.Raw(body)))
        await self._end(Outgoing("done", self.id))

    async def start(self, headers: Headers) -> None:
        if self.started:
            return
        self.started = True
        self._note_request_id(headers)

    async def write(self, data: bytes) -> None:
        if self.ended:
            return
        self._buffer += data
        await self._relay(final=False)

    async def end(self) -> None:
        if self.ended:
            return
        await self._relay(final=True)

    def _note_request_id(self, headers: Headers) -> None:
        for key, value in headers:
            if key == b"x-request-id":
                self.request_id = value.decode("latin-1")
                return

    # --- SSE events to messages ----------------------------------------------------------------

    async def _relay(self, final: bool) -> None:
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            data = sse_data(event)
            if data is None:
                continue  # a keep-alive comment: the socket has its own pings
            if data == b"[DONE]":
                continue  # done is sent when the stream ends, so it is always the last message
            if data.startswith(b'{"error"'):
                await self._fail(data, status=UNSET)
                return
            await self._socket.write(Outgoing("chunk", self.id, data=msgspec.Raw(data)))
        if final:
            await self._end(Outgoing("done", self.id))

    async def _fail(self, envelope: bytes, status: int | UnsetType) -> None:
        await self._end(Outgoing("error", self.id, status=status, error=error_object(envelope)))

    def _end_now(self) -> None:
        self.ended = True
        self._socket.ended(self.id)

    async def _end(self, message: Outgoing) -> None:
        # Free the id before the client can see the last message and reuse it.
        self._end_now()
        if message.type in ("done", "error") and self.request_id is not None:
            message.request_id = self.request_id
        await self._socket.write(message)


def error_object(envelope: bytes) -> msgspec.Raw:
    """OpenAI's error object from an envelope; upstreams that send a bare string get it wrapped."""
    try:
        error = _decode_object(envelope)["error"]
    except (msgspec.DecodeError, KeyError):
        return msgspec.Raw(_encode({"message": envelope.decode("utf-8", "replace")}))
    if bytes(error).lstrip().startswith(b"{"):
        return error
    return msgspec.Raw(_encode({"message": msgspec.json.decode(error), "type": "upstream_error"}))


def sse_data(event: bytes) -> bytes | None:
    """The data of one SSE event (its ``data:`` lines joined), or None for a comment."""
    if not event.startswith(b"data:"):
        lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            return None
        return b"\n".join(_field(line) for line in lines)
    if b"\ndata:" in event:
        return b"\n".join(_field(line) for line in event.split(b"\n") if line.startswith(b"data:"))
    return _field(event.rstrip(b"\n"))


def _field(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value.startswith(b" ") else value
