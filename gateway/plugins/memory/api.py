"""Memory over HTTP: ``/v1/memory/*`` and seed 004's ``/internal/agent-memory/*``, same code.

    POST   /v1/memory/query       {"query": "...", "limit": 5, "channel": "...", "kinds": [...]}
    POST   /v1/memory/store       {"content": "...", "kind": "kb"} or {"items": [{...}, ...]}
    POST   /v1/memory/summarize   {"channel": "...", "model": "..."}
    GET    /v1/memory/items/{id}
    DELETE /v1/memory/items/{id}
    DELETE /v1/memory?channel=...&session_id=...&kind=...   (or ?all=true: all of the agent's)

Every call acts for the caller's agent: the key's agent, or, for a trusted caller (the admin
key, a trusted key, a local caller in embedded mode), the agent it names in ``agent_id`` or
``X-Agent-Id``. An agent never sees another agent's items; naming another agent without
being trusted is a 403. The admin key naming no agent reads and deletes across all agents.
A query without text lists the newest items of the scope.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from gateway.auth import Authenticator, speaking_for
from gateway.errors import BadRequest, Forbidden, NotFound
from gateway.identity import Identity
from gateway.plugins.memory.bodies import (
    QueryBody,
    SeedQuery,
    SeedStore,
    SeedSummarize,
    StoreBody,
    StoreItem,
    SummarizeBody,
)
from gateway.plugins.memory.items import KINDS, Hit, MemoryItem, NewItem, Scope, kind_of
from gateway.plugins.memory.service import MemoryService
from gateway.plugins.memory.summary import timestamp

MAX_LIMIT = 100
MAX_ITEMS = 1000
ID_PREFIX = "mem-"
_encode = msgspec.json.Encoder().encode


class MemoryController(Controller):
    path = "/v1/memory"

    @post("/query", status_code=200)
    async def query(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        data: JSONBody[QueryBody],
    ) -> dict[str, Any]:
        identity = _identity(auth, request)
        scope = Scope(
            _reader(identity, data.agent_id),
            data.project,
            data.channel,
            data.session_id,
            _kinds(data.kinds, "kinds", indexed=True),
        )
        limit = _limit(data.limit, memory.settings.default_limit)
        if data.query or data.embedding is not None:
            hits = await _search(memory, scope, limit, data.query, data.embedding)
            return {"object": "list", "data": [_view(h.item, h) for h in hits]}
        items = await memory.recent(scope, limit)
        return {"object": "list", "data": [_view(item) for item in items]}

    @post("/store", status_code=200)
    async def store(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        data: JSONBody[StoreBody],
    ) -> dict[str, Any]:
        agent = _writer(_identity(auth, request), data.agent_id)
        # Each entry with where it sits in the body, for a 400 to name its field.
        fields = [f"items[{i}]." for i in range(len(data.items))]
        entries = list(data.items)
        if data.content is not None:
            entries.insert(
                0, StoreItem(data.content, data.kind, meta=data.meta, embedding=data.embedding)
            )
            fields.insert(0, "")
        if not entries:
            raise BadRequest("nothing to store: give content, or items", param="content")
        if len(entries) > MAX_ITEMS:
            raise BadRequest(f"at most {MAX_ITEMS} items per call", param="items")
        items = [
            _new_item(
                agent,
                entry.content,
                entry.kind,
                entry.project or data.project,
                entry.channel or data.channel,
                entry.session_id or data.session_id,
                entry.meta,
                field,
            )
            for entry, field in zip(entries, fields, strict=True)
        ]
        embeddings = [e.embedding for e in entries]
        if any(e is not None for e in embeddings):
            await memory.ready()  # numpy comes with it; see MemoryService.ready
        ids = await memory.store(items, _vectors(embeddings))
        names = [_public_id(i) for i in ids]
        return {"object": "list", "ids": names, "id": names[0]}

    @post("/summarize", status_code=200)
    async def summarize(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        data: JSONBody[SummarizeBody],
    ) -> dict[str, Any]:
        agent = _writer(_identity(auth, request), data.agent_id)
        scope = Scope(agent, data.project, data.channel, data.session_id)
        return await _summarize(memory, scope, data.model, data.limit)

    @get("/items/{item_id:str}")
    async def item(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        item_id: FromPath[str],
    ) -> dict[str, Any]:
        identity = _identity(auth, request)
        found = await memory.get([_parse_id(item_id)])
        agent = _reader(identity, None)
        if not found or (agent is not None and found[0].agent_id != agent):
            raise NotFound(f"no memory item {item_id!r}")
        return _view(found[0])

    @delete("/items/{item_id:str}", status_code=200)
    async def forget_item(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        item_id: FromPath[str],
    ) -> dict[str, Any]:
        scope = Scope(_reader(_identity(auth, request), None))
        deleted = await memory.delete(scope, [_parse_id(item_id)])
        if not deleted:
            raise NotFound(f"no memory item {item_id!r}")
        return {"deleted": deleted}

    @delete("/", status_code=200)
    async def forget(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        agent_id: FromQuery[str | None] = None,
        project: FromQuery[str | None] = None,
        channel: FromQuery[str | None] = None,
        session_id: FromQuery[str | None] = None,
        kind: FromQuery[list[str] | None] = None,
        all: FromQuery[bool] = False,
    ) -> dict[str, Any]:
        identity = _identity(auth, request)
        scope = Scope(
            _reader(identity, agent_id), project, channel, session_id, _kinds(kind or [], "kind")
        )
        narrowed = any((project, channel, session_id, kind))
        if not narrowed and not all:
            raise BadRequest(
                "this would delete every item of the agent: narrow it (project, channel, "
                "session_id, kind) or confirm with all=true",
                param="all",
            )
        return {"deleted": await memory.delete(scope)}


class InternalMemoryController(Controller):
    """Seed 004's Memory Orchestrator API, on the same operations."""

    path = "/internal/agent-memory"

    @post("/query", status_code=200)
    async def query(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        data: JSONBody[SeedQuery],
    ) -> dict[str, Any]:
        identity = _identity(auth, request)
        kinds = _kinds([data.kind] if data.kind else [], "kind")
        scope = Scope(
            _reader(identity, data.agent_id), data.microdao_id, data.channel_id, None, kinds
        )
        limit = _limit(data.limit, memory.settings.default_limit)
        if data.query:
            hits = await _search(memory, scope, limit, data.query, None)
            return {"items": [_seed_view(h.item, h.score) for h in hits]}
        return {"items": [_seed_view(item, None) for item in await memory.recent(scope, limit)]}

    @post("/store", status_code=200)
    async def store(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        data: JSONBody[SeedStore],
    ) -> dict[str, Any]:
        agent = _writer(_identity(auth, request), data.agent_id)
        item = _new_item(
            agent,
            data.content,
            data.kind,
            data.microdao_id,
            data.channel_id,
            data.session_id,
            data.meta,
        )
        (item_id,) = await memory.store([item])
        return {"ok": True, "id": _public_id(item_id)}

    @post("/summarize", status_code=200)
    async def summarize(
        self,
        memory: NamedDependency[MemoryService],
        auth: NamedDependency[Authenticator],
        request: Request[Any, Any, Any],
        data: JSONBody[SeedSummarize],
    ) -> dict[str, Any]:
        agent = _writer(_identity(auth, request), data.agent_id)
        scope = Scope(agent, data.microdao_id, data.channel_id)
        return {"ok": True, **await _summarize(memory, scope, data.model, data.limit)}


def memory_controllers() -> list[type[Controller]]:
    """For the plugin's ``register_routes``: they take its service as the ``memory`` dependency."""
    return [MemoryController, InternalMemoryController]


# --- who, and which items ----------------------------------------------------------------


def _identity(auth: Authenticator, request: Request[Any, Any, Any]) -> Identity:
    scope: Any = request.scope
    return speaking_for(auth.identify(scope), scope, {})


def _named(identity: Identity, agent_id: str | None) -> str | None:
    """The agent a body names, if the caller may act for it."""
    if not agent_id or agent_id == identity.agent_id:
        return None
    if not (identity.trusted or identity.is_admin):
        raise Forbidden(
            f"this key acts for agent {identity.agent_id!r}, not {agent_id!r}", param="agent_id"
        )
    return agent_id


def _reader(identity: Identity, agent_id: str | None) -> str | None:
    """Whose items a read or delete sees; None (all agents) for the admin naming none."""
    named = _named(identity, agent_id)
    if named is not None:
        return named
    if identity.is_admin and identity.agent_id == "admin":
        return None
    return identity.agent_id


def _writer(identity: Identity, agent_id: str | None) -> str:
    return _named(identity, agent_id) or identity.agent_id


def _kinds(names: list[str], field: str, *, indexed: bool = False) -> tuple[str, ...]:
    """Known kinds of ``names``; a 400 names ``field`` (``kinds[1]`` when ``indexed``: a body's
    list, where the index finds the entry; a repeated query parameter has none)."""
    kinds: list[str] = []
    for index, name in enumerate(names):
        kind = kind_of(name)
        if kind is None:
            where = f"{field}[{index}]" if indexed else field
            raise BadRequest(
                f"unknown kind {name!r} in '{where}'; expected one of {', '.join(KINDS)}",
                param=where,
            )
        kinds.append(kind)
    return tuple(kinds)


def _limit(value: int | None, default: int) -> int:
    limit = default if value is None else value
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: expected 1 to {MAX_LIMIT}", param="limit")
    return limit


def _parse_id(text: str) -> int:
    digits = text[len(ID_PREFIX) :] if text.startswith(ID_PREFIX) else text
    # ASCII only ("²".isdigit() is true, int() refuses it) and within SQLite's 64-bit
    # integers (a longer number raised OverflowError in the driver: a 500).
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19 or int(digits) > _MAX_ROWID:
        raise NotFound(f"no memory item {text[:80]!r}")
    return int(digits)


_MAX_ROWID = 2**63 - 1


def _public_id(item_id: int) -> str:
    return f"{ID_PREFIX}{item_id}"


# --- the operations ----------------------------------------------------------------------


async def _search(
    memory: MemoryService, scope: Scope, limit: int, text: str, embedding: list[float] | None
) -> list[Hit]:
    if embedding is None:
        return await memory.search(scope, limit, text=text)
    await memory.ready()  # numpy comes with it; see MemoryService.ready
    import numpy as np

    try:
        return await memory.search(scope, limit, vector=np.asarray(embedding, dtype=np.float32))
    except ValueError as exc:
        raise BadRequest(str(exc), param="embedding") from None


async def _summarize(
    memory: MemoryService, scope: Scope, model: str | None, limit: int | None
) -> dict[str, Any]:
    settings = memory.settings.summarize
    chosen = model or settings.model
    if not chosen:
        raise BadRequest(
            "no summary model: name one (model) or set memory.summarize.model", param="model"
        )
    if limit is not None and not 1 <= limit <= MAX_ITEMS:
        raise BadRequest(f"limit: expected 1 to {MAX_ITEMS}", param="limit")
    summary = await memory.summarize(scope, chosen, limit or settings.items)
    return {
        "id": _public_id(summary.id),
        "summary": summary.text,
        "items": summary.items,
        "model": summary.model,
    }


def _new_item(
    agent: str,
    content: str | dict[str, Any],
    kind: str,
    project: str | None,
    channel: str | None,
    session: str | None,
    meta: dict[str, Any],
    field: str = "",
) -> NewItem:
    """The item to store; a 400 names its field after ``field`` (``items[2].``, or "")."""
    known = kind_of(kind)
    if known is None:
        raise BadRequest(
            f"{field}kind: expected one of {', '.join(KINDS)}, got {kind!r}", param=f"{field}kind"
        )
    text, extra = _content(content)
    if not text.strip():
        raise BadRequest(f"{field}content is empty", param=f"{field}content")
    return NewItem(
        agent_id=agent,
        kind=known,
        content=text,
        project=project or "",
        channel=channel or "",
        session_id=session or "",
        meta={**meta, **extra},
    )


def _content(content: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Text to embed, and what of a structured content goes into meta."""
    if isinstance(content, str):
        return content, {}
    user, reply = content.get("user_message"), content.get("agent_reply")
    if isinstance(user, str) and isinstance(reply, str):
        return f"User: {user}\nAssistant: {reply}", {"user_message": user, "agent_reply": reply}
    return _encode(content).decode(), {"content": content}


def _vectors(embeddings: list[list[float] | None]) -> Any:
    given = [e for e in embeddings if e is not None]
    if not given:
        return None
    if len(given) != len(embeddings):
        raise BadRequest("give an embedding for every item or for none", param="embedding")
    if len({len(e) for e in given}) != 1:
        raise BadRequest("embeddings differ in size", param="embedding")
    import numpy as np

    return np.asarray(given, dtype=np.float32)


# --- answers -----------------------------------------------------------------------------


def _view(item: MemoryItem, hit: Hit | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": _public_id(item.id),
        "object": "memory.item",
        "kind": item.kind,
        "content": item.content,
        "agent_id": item.agent_id,
        "project": item.project or None,
        "channel": item.channel or None,
        "session_id": item.session_id or None,
        "meta": item.meta,
        "created_at": item.created_at,
    }
    if hit is not None:
        view["score"] = round(hit.score, 6)
        view["similarity"] = round(hit.similarity, 6)
    return view


def _seed_view(item: MemoryItem, score: float | None) -> dict[str, Any]:
    if item.channel:
        source = f"channel:{item.channel}"
    elif item.project:
        source = f"microdao:{item.project}"
    else:
        source = f"agent:{item.agent_id}"
    return {
        "id": _public_id(item.id),
        "kind": "dao-event" if item.kind == "event" else item.kind,
        "score": None if score is None else round(score, 6),
        "content": item.content,
        "meta": {**item.meta, "source": source, "timestamp": timestamp(item.created_at)},
    }
