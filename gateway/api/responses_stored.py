"""The stored responses' endpoints besides creation (gateway/api/responses.py):

    GET    /v1/responses/{id}               the Response object as it was answered
    DELETE /v1/responses/{id}
    GET    /v1/responses/{id}/input_items   its request's input items, paged
    POST   /v1/responses/input_tokens       a token estimate for a request's input

A response is its caller's alone: another key (or another agent of a trusted key) gets the same
404 as for an id that never existed, so not even its existence leaks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from gateway.api.responses import owner_of
from gateway.errors import NotFound
from gateway.responses_store.listing import page, with_ids
from gateway.responses_store.records import Owner, StoredResponse
from gateway.responses_store.store import ResponseStore, settled
from gateway.state import GatewayState
from gateway.tokens import from_message_parts
from gateway.translate import responses

_JSON = "application/json"


def _owner(state: GatewayState, request: Request[Any, Any, Any]) -> Owner:
    scope: Any = request.scope
    return owner_of(state.auth, scope)


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"no response found with id {response_id!r}", param="response_id")


async def _stored(
    state: GatewayState, request: Request[Any, Any, Any], response_id: str
) -> tuple[ResponseStore, Owner, StoredResponse]:
    owner = _owner(state, request)
    store = state.responses
    # A replica on PostgreSQL may have to read it first (gateway/responses_store/store.py).
    record = await settled(partial(store.get, owner, response_id)) if store is not None else None
    if store is None or record is None:
        raise _not_found(response_id)
    return store, owner, record


class StoredResponsesController(Controller):
    path = "/v1/responses"

    @get("/{response_id:str}")
    async def retrieve(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[GatewayState],
        response_id: FromPath[str],
    ) -> Response[bytes]:
        _, _, record = await _stored(gateway, request, response_id)
        return Response(record.response, media_type=_JSON)

    @delete("/{response_id:str}", status_code=200)
    async def remove(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[GatewayState],
        response_id: FromPath[str],
    ) -> dict[str, Any]:
        store, owner, _ = await _stored(gateway, request, response_id)
        store.delete(owner, response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    @get("/{response_id:str}/input_items")
    async def input_items(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[GatewayState],
        response_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
        order: FromQuery[str] = "desc",
    ) -> dict[str, Any]:
        _, _, record = await _stored(gateway, request, response_id)
        return page(with_ids(record.id, record.input), after, limit, order)

    @post("/input_tokens", status_code=200)
    async def input_tokens(
        self, request: Request[Any, Any, Any], gateway: NamedDependency[GatewayState]
    ) -> dict[str, Any]:
        decoded, fields = responses.decode(await request.body())
        history: list[responses.Item] = []
        previous = decoded.previous_response_id
        if previous:
            store = gateway.responses
            if store is None:
                raise NotFound(
                    f"previous response with id {previous!r} not found",
                    param="previous_response_id",
                )
            owner = _owner(gateway, request)
            history = await settled(partial(store.conversation, owner, previous))
        items = [*history, *responses.input_items(decoded)]
        conversation = msgspec.structs.replace(decoded, input=items)
        messages = responses.chat_messages(conversation)
        chars, images = _parts(messages)
        tools = fields.get("tools")
        chars += len(tools) if tools is not None else 0
        count = from_message_parts(chars, images, len(messages))
        return {"object": "response.input_tokens", "input_tokens": count}


def _parts(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """Characters of text and number of images in chat messages."""
    chars = images = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    chars += len(part.get("text", ""))
                else:
                    images += 1
        for call in message.get("tool_calls") or ():
            function = call["function"]
            chars += len(function["name"]) + len(function["arguments"])
    return chars, images
