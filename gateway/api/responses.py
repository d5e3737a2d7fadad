"""OpenAI's Responses API over any chat-completions upstream: ``POST /v1/responses`` and
``POST /v1/responses/compact`` (the stored responses' other endpoints are in
gateway/api/responses_stored.py).

Codex CLI speaks only this API. Keep-alives are SSE comments, which every Responses client
skips; errors use OpenAI's envelope before the stream starts and ``response.failed`` after.

``store: true`` (the API's default) keeps the answer (gateway/responses_store), and a later
``previous_response_id`` replays the stored conversation as chat history on whichever upstream
answers it: another model, another provider, another protocol. Even for an OpenAI target the
history is replayed rather than the id passed through: turnout's ids mean nothing to OpenAI,
and a conversation that moved between providers has no one upstream that holds it. The one
exception: a provider with ``responses_api`` (OpenAI itself) is sent the client's body as it
came and answers in its own Responses (gateway/translate/responses_native.py); a continuation
of such an answer that goes to the same provider passes the id on (the id is that provider's),
while any other target still replays.

Compaction: ``POST /v1/responses/compact``, and a Responses request whose input ends in a
``compaction_trigger`` item (Codex's remote compaction), are both answered by the summariser
model (``responses.summariser``) with a ``compaction`` item (gateway/translate/responses_compact*).
The same path also takes WebSocket upgrades (gateway/api/responses_socket.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec

from gateway.api.responses_socket import SOCKET_STORE, ResponsesSocket
from gateway.asgi import Receive, Scope, Send
from gateway.auth import Authenticator, speaking_for
from gateway.contract import Native
from gateway.errors import BadRequest, GatewayError, openai_envelope
from gateway.pipeline.call import Dialect, Exchange
from gateway.pipeline.endpoint import EndpointFactory, IngressEndpoint
from gateway.responses_store.recording import Keeping, StoringExchange
from gateway.responses_store.records import Owner
from gateway.responses_store.store import ResponseStore
from gateway.state import GatewayState
from gateway.streaming import KEEPALIVE
from gateway.translate import encode, responses
from gateway.translate.responses_compact import prepare_compact
from gateway.translate.responses_compact_stream import TRIGGER
from gateway.translate.responses_native import native_request

_NOT_STORED = (
    "previous_response_id is not supported: this gateway stores no responses "
    "(responses.store is false in its routing.yaml). Send the whole conversation in 'input'."
)


def _error_body(error: GatewayError, request_id: str) -> bytes:
    return openai_envelope(error)


def owner_of(auth: Authenticator, scope: Scope) -> Owner:
    """Whose a request's stored responses are: its key, and the agent it speaks for.

    From the headers alone (a trusted key's X-Agent-Id), not the body's metadata: GET and
    DELETE have no body, and the owner must come out the same on every endpoint.
    """
    identity = speaking_for(auth.identify(scope), scope, _NO_FIELDS)
    return Owner(identity.key_id, identity.agent_id)


_NO_FIELDS: dict[str, msgspec.Raw] = {}


def input_json(request: responses.ResponsesRequest, fields: dict[str, msgspec.Raw]) -> bytes:
    """The request's own input items as JSON, as they are stored (a string is one message)."""
    given = fields.get("input")
    if isinstance(request.input, list) and given is not None:
        return bytes(given)
    text = request.input if isinstance(request.input, str) else ""
    if not text:
        return b"[]"
    return encode(
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]
    )


def _sealed(request: responses.ResponsesRequest) -> Iterator[str | None]:
    items = request.input
    return (item.encrypted_content for item in items) if isinstance(items, list) else iter(())


class StatefulResponses:
    """The Responses requests of one running gateway: its store, its auth, its summariser."""

    __slots__ = ("_auth", "_store", "_summariser")

    def __init__(self, state: GatewayState) -> None:
        self._store = state.responses
        self._auth = state.auth
        self._summariser = state.config.responses.summariser

    def _history(self, owner: Owner, previous: str, scope: Scope) -> list[responses.Item]:
        local: ResponseStore | None = scope.get(SOCKET_STORE)
        if local is not None:
            return local.conversation(owner, previous, fallback=self._store)
        if self._store is None:
            raise BadRequest(_NOT_STORED, param="previous_response_id")
        return self._store.conversation(owner, previous)

    def _answered_by(self, owner: Owner, previous: str, scope: Scope) -> str | None:
        """The provider that answered ``previous`` in its own Responses API, if one did."""
        local: ResponseStore | None = scope.get(SOCKET_STORE)
        record = None
        for store in (local, self._store):
            if store is not None and record is None:
                record = store.get(owner, previous)
        return record.upstream if record is not None else None

    def prepare(self, body: bytes, scope: Scope) -> Exchange:
        request, fields = responses.decode(body)
        store = self._store
        # A Responses WebSocket's own turns, kept for the socket's life even with store: false
        # (gateway/api/responses_socket.py): Codex continues them by id on the same socket.
        local: ResponseStore | None = scope.get(SOCKET_STORE)
        keep = store is not None and request.store is not False
        previous = request.previous_response_id
        now = int(time.time())
        if not keep and not previous and local is None:
            # Codex's way over HTTP (store: false, the whole conversation each time): no state.
            native = native_request(body, False, _sealed(request), None)
            return self._answer(request, fields, now, native=native)
        owner = owner_of(self._auth, scope)
        history = self._history(owner, previous, scope) if previous else None
        only = self._answered_by(owner, previous, scope) if previous else None
        native = native_request(body, bool(previous), _sealed(request), only)
        exchange = self._answer(request, fields, now, history, keep, native)
        keeping = self._keeping(request, fields, owner, keep, local)
        return exchange if keeping is None else StoringExchange(exchange, keeping)

    def _keeping(
        self,
        request: responses.ResponsesRequest,
        fields: dict[str, msgspec.Raw],
        owner: Owner,
        keep: bool,
        local: ResponseStore | None,
    ) -> Keeping | None:
        """Where the answer goes: the gateway's store (``store: true``), the socket's, both."""
        stores = tuple(s for s in (self._store if keep else None, local) if s is not None)
        if not stores:
            return None
        previous = request.previous_response_id
        return Keeping(
            stores,
            owner,
            previous,
            request.model,
            input_json(request, fields),
            upstream_keeps=request.store is not False,
        )

    def _answer(
        self,
        request: responses.ResponsesRequest,
        fields: dict[str, msgspec.Raw],
        now: int,
        history: list[responses.Item] | None = None,
        keep: bool = False,
        native: Native | None = None,
    ) -> Exchange:
        """The exchange for a Responses request: a model's answer, or (Codex's remote
        compaction, an input ending in a ``compaction_trigger`` item) the summariser's."""
        exchange = responses.translate(
            request, fields, now, history=history, stored=keep, native=native
        )
        items = request.input
        if isinstance(items, list) and items and items[-1].type == TRIGGER:
            summariser = self._summariser or request.model
            return prepare_compact(request, summariser, now, history, turn=exchange.template)
        return exchange

    def warm_up(self, body: bytes, scope: Scope) -> bytes:
        """A ``generate: false`` request (Codex's warm-up on a new socket): no model is asked.
        Its Response, with no output, is kept like any other, so the request that follows can
        continue from its input by id."""
        request, fields = responses.decode(body)
        store = self._store
        local: ResponseStore | None = scope.get(SOCKET_STORE)
        keep = store is not None and request.store is not False
        owner = owner_of(self._auth, scope)
        previous = request.previous_response_id
        if previous:
            self._history(owner, previous, scope)  # a 404 when it is not there
        template = responses.translate(request, fields, int(time.time()), stored=keep).template
        response = encode(template.response(template.ids("resp_"), "completed", []))
        keeping = self._keeping(request, fields, owner, keep, local)
        if keeping is not None:
            keeping.keep(response)
        return response

    def prepare_compact(self, body: bytes, scope: Scope) -> Exchange:
        request, _ = responses.decode(body)
        previous = request.previous_response_id
        history = None
        if previous:
            history = self._history(owner_of(self._auth, scope), previous, scope)
        summariser = self._summariser or request.model
        return prepare_compact(request, summariser, int(time.time()), history)


class ResponsesEndpoint:
    """``POST /v1/responses``, and Responses over a WebSocket on the same path (Codex's
    ``supports_websockets``; gateway/api/responses_socket.py), through one pipeline."""

    __slots__ = ("_auth", "_http", "_limit", "_warm_up")

    def __init__(self, state: GatewayState) -> None:
        stateful = StatefulResponses(state)
        self._warm_up = stateful.warm_up
        dialect = Dialect(
            route="responses",
            prepare=stateful.prepare,
            error_body=_error_body,
            keepalive=KEEPALIVE,
        )
        self._http = IngressEndpoint(state, dialect)
        self._auth = state.auth
        self._limit = state.config.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            socket = ResponsesSocket(
                scope, receive, send, self._http.pipeline, self._auth, self._limit, self._warm_up
            )
            await socket.serve()
            return
        await self._http(scope, receive, send)


def _compact(state: GatewayState) -> IngressEndpoint:
    dialect = Dialect(
        route="responses_compact",
        prepare=StatefulResponses(state).prepare_compact,
        error_body=_error_body,
        keepalive=KEEPALIVE,
    )
    return IngressEndpoint(state, dialect)


# Path -> endpoint for OpenAI's Responses API.
ENDPOINTS: dict[str, EndpointFactory] = {
    "/v1/responses": ResponsesEndpoint,
    "/v1/responses/compact": _compact,
}
