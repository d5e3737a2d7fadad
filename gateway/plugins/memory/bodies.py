"""The request bodies of the memory API (gateway/plugins/memory/api.py): ``/v1/memory/*`` and
seed 004's ``/internal/agent-memory/*``. Litestar decodes them, and describes them in
/openapi.json from these Structs; a wrong field is a 400 naming it (gateway/field_errors.py).
"""

from __future__ import annotations

from typing import Any

import msgspec


class QueryBody(msgspec.Struct, forbid_unknown_fields=True):
    query: str = ""
    agent_id: str | None = None
    project: str | None = None
    channel: str | None = None
    session_id: str | None = None
    kinds: list[str] = []
    limit: int | None = None
    # A query vector computed elsewhere (same embedder as the store's); skips embedding.
    embedding: list[float] | None = None


class StoreItem(msgspec.Struct, forbid_unknown_fields=True):
    # Text, or seed 004's {"user_message": ..., "agent_reply": ...}.
    content: str | dict[str, Any]
    kind: str = "kb"
    project: str | None = None
    channel: str | None = None
    session_id: str | None = None
    meta: dict[str, Any] = {}
    embedding: list[float] | None = None


class StoreBody(msgspec.Struct, forbid_unknown_fields=True):
    """One item (``content`` and the rest) or several (``items``); scope fields are defaults."""

    agent_id: str | None = None
    project: str | None = None
    channel: str | None = None
    session_id: str | None = None
    items: list[StoreItem] = []
    content: str | dict[str, Any] | None = None
    kind: str = "kb"
    meta: dict[str, Any] = {}
    embedding: list[float] | None = None


class SummarizeBody(msgspec.Struct, forbid_unknown_fields=True):
    agent_id: str | None = None
    project: str | None = None
    channel: str | None = None
    session_id: str | None = None
    # A logical chat model; default: memory.summarize.model.
    model: str | None = None
    limit: int | None = None


class SeedQuery(msgspec.Struct):
    """Seed 004's /internal/agent-memory/query request."""

    query: str = ""
    agent_id: str | None = None
    microdao_id: str | None = None
    channel_id: str | None = None
    limit: int = 5
    kind: str | None = None


class SeedStore(msgspec.Struct):
    """Seed 004's /internal/agent-memory/store request."""

    content: str | dict[str, Any]
    kind: str = "conversation"
    agent_id: str | None = None
    microdao_id: str | None = None
    channel_id: str | None = None
    session_id: str | None = None
    meta: dict[str, Any] = {}


class SeedSummarize(msgspec.Struct):
    agent_id: str | None = None
    microdao_id: str | None = None
    channel_id: str | None = None
    model: str | None = None
    limit: int | None = None
