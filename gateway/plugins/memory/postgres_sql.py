"""The SQL of the ``postgresql`` memory backend (``postgres_store.py``), and its notifications.

Each function here runs on one of the backend's threads, inside the transaction its
``_Session`` opened, with a psycopg connection; nothing here touches the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.dialect import postgres_params
from gateway.errors import ConfigError
from gateway.plugins.memory.items import MemoryItem, NewItem, Scope
from gateway.plugins.memory.mirror import Row
from gateway.plugins.memory.queries import COLUMNS, item_of, items_where, row_of

if TYPE_CHECKING:
    import psycopg

    from gateway.plugins.memory.backends import Vectors

CHANNEL = "turnout_memory_changed"
# A NOTIFY payload must stay under 8000 bytes.
_PAYLOAD_BYTES = 7000
# An agent id too long to name in a payload: replicas re-check every copy instead.
_LONGEST_AGENT = 2000
SEARCH_COLUMNS = "id, kind, project, channel, session_id, created_at, embedding"
_encode = msgspec.json.Encoder().encode


class Note(msgspec.Struct, frozen=True, omit_defaults=True):
    """One notification: ids of one agent added or deleted (``stale``: ask about them all)."""

    agent: str = ""
    added: list[int] = []
    deleted: list[int] = []
    stale: bool = False


def notes(agent: str, added: Sequence[int] = (), deleted: Sequence[int] = ()) -> list[str]:
    """The payloads that announce a change, each under the server's limit."""
    if len(agent.encode()) > _LONGEST_AGENT:
        return [_encode(Note(stale=True)).decode()]
    per = max(1, (_PAYLOAD_BYTES - len(_encode(agent)) - 40) // 21)
    payloads = [
        Note(agent, added=list(added[start : start + per])) for start in range(0, len(added), per)
    ] + [
        Note(agent, deleted=list(deleted[start : start + per]))
        for start in range(0, len(deleted), per)
    ]
    return [_encode(note).decode() for note in payloads]


def _announce(connection: psycopg.Connection[Any], payloads: list[str]) -> None:
    # Delivered when the transaction commits, to every replica listening (this one too).
    for payload in payloads:
        connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _where(scope: Scope, ids: Sequence[int] = ()) -> tuple[str, list[Any]]:
    where, params = items_where(scope)
    where = postgres_params(where)
    if ids:
        where += (" AND " if where else "WHERE ") + "id = ANY(%s)"
        params.append(list(ids))
    return where, params


# --- the store's identity -----------------------------------------------------------------------


def claim_embedder(
    connection: psycopg.Connection[Any], where: str, embedder: str, dims: int | None
) -> int | None:
    """Record the embedder (and size) if this is the first replica; check them if not.
    Returns the vectors' size when known. Vectors from two embedders are not comparable."""
    upsert = "INSERT INTO memory_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING"
    connection.execute(upsert, ("embedder", embedder))
    if dims is not None:
        connection.execute(upsert, ("dims", str(dims)))
    meta = dict(connection.execute("SELECT key, value FROM memory_meta").fetchall())
    if meta["embedder"] != embedder:
        raise ConfigError(
            f"{where} holds vectors made by {meta['embedder']!r}, but memory.embeddings now "
            f"gives {embedder!r}: point memory.database at a new database, or set "
            "memory.embeddings back"
        )
    known = int(meta["dims"]) if "dims" in meta else None
    if dims is not None and known != dims:
        raise ConfigError(f"{where} holds {known}-dimensional vectors; {embedder} makes {dims}")
    return known


def read_dims(connection: psycopg.Connection[Any]) -> int | None:
    row = connection.execute("SELECT value FROM memory_meta WHERE key = 'dims'").fetchone()
    return None if row is None else int(row[0])


# --- writing ------------------------------------------------------------------------------------


def insert(
    connection: psycopg.Connection[Any],
    items: Sequence[NewItem],
    vectors: Vectors,
    now: float,
    claim: bool,
) -> tuple[list[int], int]:
    """Store items with new ids (from the identity sequence, which never repeats one); returns
    the ids and the vectors' size, recorded here by the first vectors when unknown."""
    dims = int(vectors.shape[1])
    if claim:
        connection.execute(
            "INSERT INTO memory_meta (key, value) VALUES ('dims', %s) ON CONFLICT (key) DO NOTHING",
            (str(dims),),
        )
        known = read_dims(connection)
        if known != dims:
            raise ValueError(f"vectors have {dims} dimensions; this memory holds {known}")
    ids = sorted(
        row[0]
        for row in connection.execute(
            "SELECT nextval(pg_get_serial_sequence('memory_items', 'id'))"
            " FROM generate_series(1, %s)",
            (len(items),),
        ).fetchall()
    )
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY memory_items ({COLUMNS}, embedding) FROM STDIN") as copy,
    ):
        for i, item in enumerate(items):
            copy.write_row((*row_of(ids[i], item, now), vectors[i].tobytes()))
    by_agent: dict[str, list[int]] = {}
    for item, id_ in zip(items, ids, strict=True):
        by_agent.setdefault(item.agent_id, []).append(id_)
    for agent, added in by_agent.items():
        _announce(connection, notes(agent, added=added))
    return ids, dims


def delete(
    connection: psycopg.Connection[Any], scope: Scope, ids: Sequence[int]
) -> list[tuple[int, str]]:
    """Delete the items in scope (of ``ids`` when given); returns (id, agent) of each."""
    where, params = _where(scope, ids)
    gone = connection.execute(
        f"DELETE FROM memory_items {where} RETURNING id, agent_id", params
    ).fetchall()
    by_agent: dict[str, list[int]] = {}
    for id_, agent in gone:
        by_agent.setdefault(agent, []).append(id_)
    for agent, deleted in by_agent.items():
        _announce(connection, notes(agent, deleted=deleted))
    return [(id_, agent) for id_, agent in gone]


# --- reading ------------------------------------------------------------------------------------


def recent(connection: psycopg.Connection[Any], scope: Scope, limit: int) -> list[MemoryItem]:
    where, params = _where(scope)
    rows = connection.execute(
        f"SELECT {COLUMNS} FROM memory_items {where} ORDER BY created_at DESC, id DESC LIMIT %s",
        [*params, limit],
    ).fetchall()
    return [item_of(row) for row in rows]


def get(connection: psycopg.Connection[Any], ids: Sequence[int]) -> list[MemoryItem]:
    rows = connection.execute(
        f"SELECT {COLUMNS} FROM memory_items WHERE id = ANY(%s) ORDER BY id", (list(ids),)
    ).fetchall()
    return [item_of(row) for row in rows]


def count(connection: psycopg.Connection[Any], scope: Scope) -> int:
    where, params = _where(scope)
    row = connection.execute(f"SELECT COUNT(*) FROM memory_items {where}", params).fetchone()
    return int(row[0]) if row else 0


def agent_rows(connection: psycopg.Connection[Any], agent: str) -> list[Row]:
    """Everything a search needs of one agent's items: its first search on this replica."""
    return _rows(connection, "WHERE agent_id = %s", [agent])


def rows_by_id(connection: psycopg.Connection[Any], ids: set[int]) -> list[Row]:
    """Items another replica added (those deleted since come back missing)."""
    return _rows(connection, "WHERE id = ANY(%s)", [sorted(ids)])


def scope_rows(connection: psycopg.Connection[Any], scope: Scope) -> list[Row]:
    where, params = _where(scope)
    return _rows(connection, where, params)


def resync(
    connection: psycopg.Connection[Any], agent: str, held: set[int]
) -> tuple[set[int], list[Row]]:
    """Which of the agent's ids exist, and the rows of those ``held`` lacks."""
    existing = {
        row[0]
        for row in connection.execute(
            "SELECT id FROM memory_items WHERE agent_id = %s", (agent,)
        ).fetchall()
    }
    missing = existing - held
    return existing, rows_by_id(connection, missing) if missing else []


def _rows(connection: psycopg.Connection[Any], where: str, params: list[Any]) -> list[Row]:
    rows = connection.execute(f"SELECT {SEARCH_COLUMNS} FROM memory_items {where}", params)
    return [
        (id_, kind, project, channel, session, created_at, bytes(embedding))
        for id_, kind, project, channel, session, created_at, embedding in rows.fetchall()
    ]
