"""The ``postgresql`` memory backend: items in PostgreSQL, shared by replicas.

Rows live in ``memory_items`` (migration m008 of the one history, gateway/migrations.py) with
their unit float32 vector as bytea: Debian's PostgreSQL has no pgvector, and none is needed.
Each replica searches a copy of an agent's vectors in memory (``mirror.py``), loaded on the
first search for that agent and kept current by id:

- its own adds and deletes change its copy as they commit;
- every add and delete is announced with ``NOTIFY`` in its transaction; the listener thread
  hands the ids to the event loop: deleted ids leave the copy at once, added ones are fetched
  (by primary key) by the next search for that agent. So a memory stored through one replica
  is found through another, and a delete is gone there, once the notification has arrived;
- a listener that lost its connection may have missed some, so when it is back every copy is
  marked stale, and its next search asks which ids exist and fetches or drops the difference.

The copies together hold at most ``memory.mirror_max_items`` rows: past it, the copies of the
agents searched least recently are dropped (their next search loads them again), and an agent
bigger than the whole bound is read, ranked and dropped at each search.

A search ranks the copy exactly (one matrix-vector product on a worker thread), then reads the
best rows whole by primary key: a database that is down fails a search with ``StoreUnavailable``
(503) even though the copy could answer, rather than answering from a copy that may hold
deleted items. Three connections, each on a thread of its own, as in the stored-responses
backend (gateway/responses_store/postgres.py): a writer, a reader and the listener.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from gateway.dialect import redacted
from gateway.errors import MigrationError, StoreUnavailable
from gateway.migrations import MIGRATIONS
from gateway.plugins.memory.items import Hit, MemoryItem, NewItem, Scope
from gateway.plugins.memory.mirror import AgentVectors, Row, Tally, rank_rows
from gateway.plugins.memory.postgres_sql import (
    CHANNEL,
    Note,
    agent_rows,
    claim_embedder,
    count,
    delete,
    get,
    insert,
    read_dims,
    recent,
    resync,
    rows_by_id,
    scope_rows,
)
from gateway.plugins.memory.queries import unit_vectors
from gateway.plugins.memory.ranking import rerank_pool
from gateway.postgres import ConnectionThread, Listening, migrate

if TYPE_CHECKING:
    import psycopg

    from gateway.plugins.memory.backends import Vectors
    from gateway.plugins.memory.settings import Memory

log = logging.getLogger("turnout.memory")
T = TypeVar("T")

# How long one memory call waits for the database before it fails (503). A server that is
# down is refused within gateway/postgres.py's CONNECT_TIMEOUT; this bounds one that hangs.
CALL_SECONDS = 10.0
_decode_note = msgspec.json.Decoder(Note)


class _Session(ConnectionThread):
    """A connection thread whose calls answer within ``CALL_SECONDS`` or fail as the memory
    API's 503; reads retry once after an outage (``ConnectionThread``)."""

    async def run(self, call: Callable[[psycopg.Connection[Any]], T], *, read: bool = True) -> T:
        try:
            return await asyncio.wait_for(super().run(call, read=read), CALL_SECONDS)
        except TimeoutError:
            raise StoreUnavailable(
                f"memory: the database did not answer within {CALL_SECONDS:g}s"
            ) from None
        except self.unreachable as exc:
            raise _unavailable(exc) from None


def _unavailable(exc: BaseException) -> StoreUnavailable:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreUnavailable(f"memory: the database is unavailable ({first_line})")


class PostgresStore:
    """The ``postgresql`` backend (see the module docstring)."""

    def __init__(self, url: str, max_items: int = 200_000) -> None:
        self._url = url
        self._dims: int | None = None
        self._writer = _Session(url, "turnout-memory-pg-write")
        self._reader = _Session(url, "turnout-memory-pg-read")
        # Least recently searched first; together at most ``max_items`` rows (``_bound``).
        self._mirrors: OrderedDict[str, AgentVectors] = OrderedDict()
        self._tally = Tally()
        self._max_items = max_items
        self._listening: Listening | None = None
        # Set while the listener listens. Until it does (and once it lost its connection)
        # every search asks the database what other replicas changed.
        self.listening = asyncio.Event()

    @classmethod
    def create(cls, settings: Memory, database: str) -> PostgresStore:
        """The registered factory."""
        return cls(database, settings.mirror_max_items)

    @property
    def dims(self) -> int | None:
        return self._dims

    async def open(self, embedder: str, dims: int | None) -> None:
        try:
            await asyncio.to_thread(migrate, self._url, MIGRATIONS)
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(f"memory.database {redacted(self._url)}: {exc}") from exc
        where = f"memory.database {redacted(self._url)}"
        self._dims = await self._writer.run(
            lambda c: claim_embedder(c, where, embedder, dims), read=False
        )
        loop = asyncio.get_running_loop()
        self._listening = Listening(
            self._url,
            CHANNEL,
            heard=lambda payload: loop.call_soon_threadsafe(self._heard, payload),
            # Changes before this moment went unheard: every copy held may be behind.
            connected=lambda _: loop.call_soon_threadsafe(self._mark_stale),
            lost=lambda: loop.call_soon_threadsafe(self.listening.clear),
            subject="memory: other replicas' changes",
            name="turnout-memory-pg-listen",
        )
        self._listening.start()
        log.info("memory: PostgreSQL at %s, vectors searched in memory", redacted(self._url))

    async def close(self) -> None:
        if self._listening is not None:
            await self._listening.stop()
            self._listening = None
        await self._writer.close()
        await self._reader.close()
        while self._mirrors:
            self._mirrors.popitem()[1].detach()

    # --- writing -------------------------------------------------------------------------

    async def add(self, items: Sequence[NewItem], vectors: Vectors) -> list[int]:
        if not items:
            return []
        vectors = unit_vectors(items, vectors)
        dims, now = int(vectors.shape[1]), time.time()
        if self._dims is not None and dims != self._dims:
            raise ValueError(f"vectors have {dims} dimensions; this memory holds {self._dims}")
        ids, self._dims = await self._writer.run(
            lambda c: insert(c, items, vectors, now, claim=self._dims is None), read=False
        )
        by_agent: dict[str, list[Row]] = {}
        for i, (item, id_) in enumerate(zip(items, ids, strict=True)):
            if item.agent_id in self._mirrors:
                by_agent.setdefault(item.agent_id, []).append(
                    (
                        id_,
                        item.kind,
                        item.project,
                        item.channel,
                        item.session_id,
                        item.created_at or now,
                        vectors[i].tobytes(),
                    )
                )
        for agent, rows in by_agent.items():  # one append per agent, not one per item
            self._mirrors[agent].extend(rows)
        self._bound()
        return ids

    async def delete(self, scope: Scope, ids: Sequence[int] = ()) -> int:
        gone = await self._writer.run(lambda c: delete(c, scope, ids), read=False)
        by_agent: dict[str, list[int]] = {}
        for id_, agent in gone:
            by_agent.setdefault(agent, []).append(id_)
        for agent, agent_ids in by_agent.items():
            mirror = self._mirrors.get(agent)
            if mirror is not None:
                mirror.remove(agent_ids)
        return len(gone)

    # --- reading -------------------------------------------------------------------------

    async def nearest(self, vector: Vectors, scope: Scope, limit: int) -> list[Hit]:
        if limit <= 0:
            return []
        if self._dims is None:  # another replica may have stored the first vectors since
            self._dims = await self._reader.run(read_dims)
            if self._dims is None:
                return []
        import numpy as np

        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self._dims:
            raise ValueError(
                f"the query vector has {query.shape[0]} dimensions; this memory holds {self._dims}"
            )
        pool = rerank_pool(limit)
        if scope.agent_id is not None:
            snapshot = (await self._vectors_of(scope.agent_id)).snapshot()
            # After the snapshot: a copy dropped here is still searched this once.
            self._bound()
            best = await asyncio.to_thread(snapshot.best, query, scope, pool)
        else:  # every agent's (the admin key): read the scope, kept by no copy
            rows = await self._reader.run(lambda c: scope_rows(c, scope))
            best = await asyncio.to_thread(rank_rows, self._dims, rows, query, scope, pool)
        items = {item.id: item for item in await self.get([id_ for id_, _ in best])}
        return [Hit(items[i], s, s) for i, s in best if i in items]

    async def recent(self, scope: Scope, limit: int) -> list[MemoryItem]:
        return await self._reader.run(lambda c: recent(c, scope, limit))

    async def get(self, ids: Sequence[int]) -> list[MemoryItem]:
        if not ids:
            return []
        return await self._reader.run(lambda c: get(c, ids))

    async def count(self, scope: Scope) -> int:
        return await self._reader.run(lambda c: count(c, scope))

    # --- the copies of agents' vectors (on the event loop) ---------------------------------

    def held(self, agent: str) -> set[int]:
        """The ids of ``agent``'s items this replica's copy holds (none before its first search)."""
        mirror = self._mirrors.get(agent)
        return set() if mirror is None else mirror.ids()

    async def _vectors_of(self, agent: str) -> AgentVectors:
        assert self._dims is not None
        mirror = self._mirrors.get(agent)
        if mirror is None:
            mirror = self._mirrors[agent] = AgentVectors(self._dims, self._tally)
        self._mirrors.move_to_end(agent)
        if not self.listening.is_set():
            # Deaf to other replicas: only the database knows what they changed.
            mirror.stale = True
        if mirror.stale or mirror.pending:
            # One refresh at a time per agent; whoever waited finds it done, or does the rest.
            async with mirror.lock:
                await self._refresh(agent, mirror)
        if mirror.needs_compaction() or mirror.needs_room():
            # Rebuilt on a worker thread, swapped in here: deletes only flag rows, and growing
            # or compacting a large copy on the loop would stall every other request.
            async with mirror.lock:
                if mirror.needs_compaction() or mirror.needs_room():
                    compaction = mirror.compaction()
                    mirror.compacted(compaction, await asyncio.to_thread(compaction.build))
        return mirror

    def _bound(self) -> None:
        """Drop the copies searched least recently while all of them hold more than
        ``memory.mirror_max_items`` rows. The one just searched is last in line, so it goes
        only when it alone is over the bound."""
        while self._tally.items > self._max_items and self._mirrors:
            agent, mirror = self._mirrors.popitem(last=False)
            mirror.detach()
            log.debug("memory: dropped the copy of %s's vectors (%d rows)", agent, mirror.size)

    async def _refresh(self, agent: str, mirror: AgentVectors) -> None:
        stale, wanted = mirror.stale, set(mirror.pending)
        if not stale and not wanted:
            return
        # Cleared before the query: what is heard while it runs is kept for the next search.
        mirror.stale = False
        mirror.pending.clear()
        mirror.begin_fetch()
        try:
            if stale and not mirror.size:
                rows = await self._reader.run(lambda c: agent_rows(c, agent))
                loaded = AgentVectors(mirror.dims, stale=False)
                await asyncio.to_thread(loaded.extend, rows)
                mirror.adopt(loaded, rows)
                return
            if stale:
                held = mirror.ids()
                existing, rows = await self._reader.run(lambda c: resync(c, agent, held))
                mirror.remove(held - existing)
            else:
                rows = await self._reader.run(lambda c: rows_by_id(c, wanted))
            mirror.extend(rows)
        except BaseException:
            mirror.stale = mirror.stale or stale
            mirror.pending |= wanted
            raise
        finally:
            mirror.end_fetch()

    def _heard(self, payload: str) -> None:
        try:
            note = _decode_note.decode(payload)
        except msgspec.DecodeError:
            log.warning("memory: an unreadable notification on %s: %.80r", CHANNEL, payload)
            return
        if note.stale:
            self._mark_stale()
            return
        mirror = self._mirrors.get(note.agent)
        if mirror is None:  # never searched here: its first search loads it whole
            return
        if note.deleted:
            mirror.remove(note.deleted)
        if note.added:
            mirror.expect(note.added)

    def _mark_stale(self) -> None:
        for mirror in self._mirrors.values():
            mirror.stale = True
        self.listening.set()
