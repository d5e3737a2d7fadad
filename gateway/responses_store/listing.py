"""``GET /v1/responses/{id}/input_items``: a stored request's input items, a page at a time.

Items as the client sent them often have no id (a plain user message never does); each gets a
stable one from its response and position, so ``after`` can page through them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import BadRequest

_ITEMS = msgspec.json.Decoder(list[dict[str, Any]])
_ORDERS = ("asc", "desc")
MAX_LIMIT = 100


def with_ids(response_id: str, stored_input: bytes) -> list[dict[str, Any]]:
    """The stored input items, each with an id (and a message with its type and status)."""
    items = _ITEMS.decode(stored_input)
    stem = response_id.removeprefix("resp_")
    for index, item in enumerate(items):
        kind = item.setdefault("type", "message")
        if kind == "message":
            item.setdefault("status", "completed")
            if isinstance(item.get("content"), str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": item["content"]}]
        if not item.get("id"):
            prefix = "msg" if kind == "message" else "item"
            item["id"] = f"{prefix}_{stem}_{index}"
    return items


def page(items: list[dict[str, Any]], after: str | None, limit: int, order: str) -> dict[str, Any]:
    """One page of ``items`` in OpenAI's list shape; a bad parameter is a 400 naming it."""
    if order not in _ORDERS:
        raise BadRequest(f"order: expected 'asc' or 'desc', got {order!r}", param="order")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: expected 1 to {MAX_LIMIT}, got {limit}", param="limit")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise BadRequest(f"after: no input item with id {after!r}", param="after")
        start = ids.index(after) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(ordered),
    }
