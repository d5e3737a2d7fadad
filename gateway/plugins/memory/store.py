"""The ``sqlite-vec`` memory backend: items in SQLite, searched with sqlite-vec.

Layout, in its own database file (``memory.database``):

- ``memory_items``: one row per item, with its unit float32 vector (the exact re-rank reads
  it) and the search shard it was put in;
- ``memory_vectors``: a sqlite-vec ``vec0`` table of 1-bit codes (the sign of each dimension),
  partitioned by agent and shard, with kind, project, channel and session as metadata columns
  so filters apply inside the KNN scan. Those four are stored as 64-bit hashes: vec0 keeps
  text longer than 12 bytes out of line, which would make every filtered row a lookup; a hash
  collision can only add a candidate, which the exact check on ``memory_items`` drops;
- ``memory_shards``: each agent's newest shard and how full it is;
- ``memory_meta``: the embedder the vectors came from, their size, the shard size.

A query asks every shard in scope for its nearest codes (``ranking.py`` says why shards), then
re-ranks those candidates by exact cosine similarity. ``vec0`` needs the vector size when it
is created, so ``memory_vectors`` appears with the first vectors when the embedder did not
say its size up front.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from gateway.errors import ConfigError
from gateway.migrations import migrate
from gateway.plugins.memory.driver import Driver, find_driver
from gateway.plugins.memory.items import Hit, MemoryItem, NewItem, Scope
from gateway.plugins.memory.queries import (
    COLUMNS,
    KIND_CODES,
    bit_codes,
    code,
    item_of,
    items_where,
    knn_params,
    knn_sql,
    row_of,
    unit_vectors,
)
from gateway.plugins.memory.ranking import candidates_per_shard, place, rerank_pool

# numpy is imported where vectors are handled, never on the start-up path: the embedder's
# background load brings it in (it costs 60-200 ms on the bench machine; issue 13).
if TYPE_CHECKING:
    from gateway.plugins.memory.backends import Vectors
    from gateway.plugins.memory.settings import Memory

log = logging.getLogger("turnout.memory")

# Items per search shard; recorded in memory_meta when the database is created.
SHARD_SIZE = 2048
# SQLite's default limit on bound parameters is 32766; stay well under it.
_CHUNK = 500


async def m001_memory(db: aiosqlite.Connection) -> None:
    # AUTOINCREMENT: an id is never reused after a delete, so a client's "mem-12" cannot come
    # to mean another item. Long text last: the re-rank reads every column up to the vector,
    # and content that spills into overflow pages must not sit in front of it.
    await db.execute(
        """
        CREATE TABLE memory_items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            agent_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            project TEXT NOT NULL DEFAULT '',
            channel TEXT NOT NULL DEFAULT '',
            session_id TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            shard INTEGER NOT NULL,
            embedding BLOB NOT NULL,
            content TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    # Newest-first listings: an agent's items, a channel's (summaries), a session's turns.
    await db.execute("CREATE INDEX memory_items_agent ON memory_items (agent_id, created_at)")
    await db.execute(
        "CREATE INDEX memory_items_channel ON memory_items (agent_id, project, channel, created_at)"
    )
    await db.execute(
        "CREATE INDEX memory_items_session ON memory_items (agent_id, session_id, created_at)"
    )
    await db.execute(
        "CREATE TABLE memory_shards ("
        "agent_id TEXT PRIMARY KEY, shard INTEGER NOT NULL, used INTEGER NOT NULL)"
    )
    await db.execute("CREATE TABLE memory_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


# Append only (see gateway/migrations.py); the memory database has its own history.
MIGRATIONS = (m001_memory,)


class SqliteVecStore:
    """The ``sqlite-vec`` backend (see the module docstring for the layout)."""

    def __init__(self, database: str, shard_size: int = SHARD_SIZE) -> None:
        self._path = database
        self._shard_size = shard_size
        self._db: aiosqlite.Connection | None = None
        self._dims: int | None = None
        self.driver: Driver | None = None
        # One write transaction at a time: the connection is shared, and two coroutines
        # interleaving BEGIN ... COMMIT on it would nest transactions.
        self._writing = asyncio.Lock()

    @classmethod
    def create(cls, settings: Memory, database: str) -> SqliteVecStore:
        """The registered factory; this backend has no settings of its own."""
        return cls(database)

    @property
    def dims(self) -> int | None:
        return self._dims

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the memory store is not open")
        return self._db

    async def open(self, embedder: str, dims: int | None) -> None:
        driver = self.driver = find_driver()
        if self._path != ":memory:" and not self._path.startswith("file:"):
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = aiosqlite.Connection(driver.connector(self._path), iter_chunk_size=256)
        await db
        self._db = db
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA busy_timeout = 5000")
            await migrate(db, MIGRATIONS)
            await self._check(embedder, dims)
            log.info(
                "memory: sqlite-vec %s on %s (SQLite %s)",
                driver.vec_version,
                driver.package,
                driver.sqlite_version,
            )
        except BaseException:
            await self.close()
            raise

    async def _check(self, embedder: str, dims: int | None) -> None:
        """Vectors from two embedders are not comparable: refuse rather than mix them."""
        meta = await self._meta()
        built_with = meta.get("embedder")
        if built_with is not None and built_with != embedder:
            raise ConfigError(
                f"memory.database {self._path} holds vectors made by {built_with!r}, but "
                f"memory.embeddings now gives {embedder!r}: point memory.database at a new "
                "file, or set memory.embeddings back"
            )
        if built_with is None:
            await self._set_meta(embedder=embedder, shard_size=str(self._shard_size))
        self._shard_size = int(meta.get("shard_size", self._shard_size))
        if "dims" in meta:
            self._dims = int(meta["dims"])
            if dims is not None and dims != self._dims:
                raise ConfigError(
                    f"memory.database {self._path} holds {self._dims}-dimensional vectors; "
                    f"{embedder} makes {dims}"
                )
        elif dims is not None:
            await self._create_vectors(dims)

    async def _meta(self) -> dict[str, str]:
        rows = await self._conn.execute_fetchall("SELECT key, value FROM memory_meta")
        return {key: value for key, value in rows}

    async def _set_meta(self, **values: str) -> None:
        await self._conn.executemany(
            "INSERT INTO memory_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    async def _create_vectors(self, dims: int) -> None:
        bits = math.ceil(dims / 8) * 8
        await self._conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS memory_vectors USING vec0("
            "id INTEGER PRIMARY KEY, agent_id TEXT PARTITION KEY, shard INTEGER PARTITION KEY,"
            f" kind INTEGER, project INTEGER, channel INTEGER, session INTEGER, bits BIT[{bits}])"
        )
        await self._set_meta(dims=str(dims))
        self._dims = dims

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    # --- writing -------------------------------------------------------------------------

    async def add(self, items: Sequence[NewItem], vectors: Vectors) -> list[int]:
        if not items:
            return []
        vectors = unit_vectors(items, vectors)
        db = self._conn
        async with self._writing:
            if self._dims is None:
                await self._create_vectors(int(vectors.shape[1]))
            if vectors.shape[1] != self._dims:
                raise ValueError(
                    f"vectors have {vectors.shape[1]} dimensions; this memory holds {self._dims}"
                )
            await db.execute("BEGIN IMMEDIATE")
            try:
                ids = await self._insert(db, items, vectors)
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        return ids

    async def _insert(
        self, db: aiosqlite.Connection, items: Sequence[NewItem], vectors: Vectors
    ) -> list[int]:
        rows = await db.execute_fetchall(
            "SELECT seq FROM sqlite_sequence WHERE name = 'memory_items'"
        )
        first = next(iter(rows))[0] + 1 if rows else 1
        ids = list(range(first, first + len(items)))
        shards = await self._place(db, items)
        now = time.time()
        codes = bit_codes(vectors)
        await db.executemany(
            f"INSERT INTO memory_items ({COLUMNS}, shard, embedding)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (*row_of(ids[i], item, now), shards[i], vectors[i].tobytes())
                for i, item in enumerate(items)
            ],
        )
        await db.executemany(
            "INSERT INTO memory_vectors (id, agent_id, shard, kind, project, channel, session, bits)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, vec_bit(?))",
            [
                (
                    ids[i],
                    item.agent_id,
                    shards[i],
                    KIND_CODES[item.kind],
                    code(item.project),
                    code(item.channel),
                    code(item.session_id),
                    codes[i].tobytes(),
                )
                for i, item in enumerate(items)
            ],
        )
        return ids

    async def _place(self, db: aiosqlite.Connection, items: Sequence[NewItem]) -> list[int]:
        """Each item's shard; advances its agent's fill in memory_shards (same transaction)."""
        agents = sorted({item.agent_id for item in items})
        current: dict[str, tuple[int, int]] = {}
        for chunk in _chunks(agents):
            rows = await db.execute_fetchall(
                "SELECT agent_id, shard, used FROM memory_shards"
                f" WHERE agent_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            current.update({agent: (shard, used) for agent, shard, used in rows})
        positions: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            positions.setdefault(item.agent_id, []).append(i)
        shards = [0] * len(items)
        updates: list[tuple[str, int, int]] = []
        for agent, where in positions.items():
            shard, used = current.get(agent, (0, 0))
            placed, shard, used = place(shard, used, len(where), self._shard_size)
            for i, s in zip(where, placed, strict=True):
                shards[i] = s
            updates.append((agent, shard, used))
        await db.executemany(
            "INSERT INTO memory_shards (agent_id, shard, used) VALUES (?, ?, ?)"
            " ON CONFLICT (agent_id) DO UPDATE SET shard = excluded.shard, used = excluded.used",
            updates,
        )
        return shards

    async def delete(self, scope: Scope, ids: Sequence[int] = ()) -> int:
        db = self._conn
        async with self._writing:
            where, params = items_where(scope, ids)
            found = [
                row[0]
                for row in await db.execute_fetchall(f"SELECT id FROM memory_items {where}", params)
            ]
            if not found:
                return 0
            await db.execute("BEGIN IMMEDIATE")
            try:
                for chunk in _chunks(found):
                    marks = ", ".join("?" * len(chunk))
                    if self._dims is not None:
                        await db.execute(f"DELETE FROM memory_vectors WHERE id IN ({marks})", chunk)
                    await db.execute(f"DELETE FROM memory_items WHERE id IN ({marks})", chunk)
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        return len(found)

    # --- reading -------------------------------------------------------------------------

    async def nearest(self, vector: Vectors, scope: Scope, limit: int) -> list[Hit]:
        if self._dims is None or limit <= 0:
            return []
        import numpy as np

        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self._dims:
            raise ValueError(
                f"the query vector has {query.shape[0]} dimensions; this memory holds {self._dims}"
            )
        shards = await self._shard_count(scope)
        if not shards:
            return []
        params = knn_params(scope, query, candidates_per_shard(limit), rerank_pool(limit))
        rows = await self._conn.execute_fetchall(knn_sql(scope, shards), params)
        return [Hit(item_of(row[:-1]), 1.0 - row[-1], 1.0 - row[-1]) for row in rows]

    async def _shard_count(self, scope: Scope) -> int:
        if scope.agent_id is not None:
            rows = await self._conn.execute_fetchall(
                "SELECT shard FROM memory_shards WHERE agent_id = ?", (scope.agent_id,)
            )
        else:
            rows = await self._conn.execute_fetchall("SELECT MAX(shard) FROM memory_shards")
        newest = next(iter(rows), (None,))[0]
        return 0 if newest is None else int(newest) + 1

    async def recent(self, scope: Scope, limit: int) -> list[MemoryItem]:
        where, params = items_where(scope)
        rows = await self._conn.execute_fetchall(
            f"SELECT {COLUMNS} FROM memory_items {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [item_of(row) for row in rows]

    async def get(self, ids: Sequence[int]) -> list[MemoryItem]:
        items: list[MemoryItem] = []
        for chunk in _chunks(list(ids)):
            rows = await self._conn.execute_fetchall(
                f"SELECT {COLUMNS} FROM memory_items WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            items.extend(item_of(row) for row in rows)
        return sorted(items, key=lambda item: item.id)

    async def count(self, scope: Scope) -> int:
        where, params = items_where(scope)
        rows = await self._conn.execute_fetchall(
            f"SELECT COUNT(*) FROM memory_items {where}", params
        )
        return int(next(iter(rows))[0])


def _chunks(values: Sequence[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start : start + _CHUNK])
