"""Stored responses: recent ones in memory, all of them in SQLite, written off the request path.

The request path only ever touches memory: ``put`` is a dict store and a deque append, and a
continuation finds the turns before it in the cache (``conversation``). The database is
written by one task in batches on aiosqlite's thread, like the usage log (gateway/usage.py),
and read only on a cache miss (a conversation older than the cache holds, or one from before
a restart): one primary-key read per turn on a connection of its own, tens of microseconds,
cheaper than a hop to a thread.

With ``server.database: ":memory:"`` there is no shared database to keep them in: the cache is
the store, bounded by ``responses.cache_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import aiosqlite

from gateway import db
from gateway.config.responses import Responses
from gateway.errors import NotFound
from gateway.migrations import migrate
from gateway.responses_store.records import Owner, StoredResponse
from gateway.translate.responses import Item

log = logging.getLogger("turnout.responses")

_COLUMNS = "id, key_id, agent_id, created_at, previous_id, model, input, response, bytes"
_INSERT = f"INSERT OR REPLACE INTO stored_responses ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
_SELECT = f"SELECT {_COLUMNS} FROM stored_responses WHERE id = ?"
_DELETE = "DELETE FROM stored_responses WHERE id = ?"
# Past the size cap: every row older than the newest one that still fits.
_OVER_CAP = """
DELETE FROM stored_responses WHERE created_at <= (
    SELECT created_at FROM (
        SELECT created_at, SUM(bytes) OVER (ORDER BY created_at DESC) AS running
        FROM stored_responses
    ) WHERE running > ? ORDER BY created_at DESC LIMIT 1
)
"""
# How often the writer deletes what retention and the size cap no longer keep.
PRUNE_SECONDS = 60.0
FLUSH_SECONDS = 0.1


class ResponseStore:
    """Owns the cache, the pending writes, the writer task and the database connections."""

    def __init__(self, settings: Responses, path: str) -> None:
        self._path = path
        self._retention = settings.retention_hours * 3600
        self._max_bytes = settings.max_bytes
        self._cache_bytes = settings.cache_bytes
        self._cache: OrderedDict[str, StoredResponse] = OrderedDict()
        self._cached = 0
        self._writer: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # Written in order by the task: a record to insert, or an id to delete.
        self._pending: deque[StoredResponse | str] = deque()
        # Not yet committed: what a cache miss must not read from (or miss in) the database.
        self._unwritten: dict[str, StoredResponse] = {}
        self._deleted: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._pruned_at = 0.0

    async def start(self) -> None:
        """Open ``server.database``, bring its schema up to date and start the writer."""
        if self._path == db.MEMORY:
            return
        self._writer = await db.connect(self._path)
        await migrate(self._writer)
        reader = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only = ON")
        self._reader = reader
        self._task = asyncio.get_running_loop().create_task(self._run(), name="responses-writer")

    # --- the request path ------------------------------------------------------------------------

    def put(self, record: StoredResponse) -> None:
        """Keep one response. O(1) but for cache eviction; never awaits; never raises."""
        if record.size > self._max_bytes:
            log.warning(
                "response %s (%d bytes) is over responses.max_bytes: not stored",
                record.id,
                record.size,
            )
            return
        self._remember(record)
        if self._writer is not None:
            self._unwritten[record.id] = record
            self._pending.append(record)

    def get(self, owner: Owner, response_id: str) -> StoredResponse | None:
        """The stored response ``response_id`` if ``owner`` may see it; None otherwise, alike
        for another caller's and for one that never existed."""
        record = self._cache.get(response_id)
        if record is not None:
            self._cache.move_to_end(response_id)
        else:
            record = self._unwritten.get(response_id) or self._read(response_id)
            if record is not None:
                self._remember(record)
        if record is None or record.owner != owner or self._expired(record):
            return None
        return record

    def conversation(
        self, owner: Owner, response_id: str, fallback: ResponseStore | None = None
    ) -> list[Item]:
        """Every item of the conversation up to and including response ``response_id``;
        turns this store lacks are looked up in ``fallback`` (a WebSocket's own turns go back
        to stored ones)."""
        turns: list[StoredResponse] = []
        next_id: str | None = response_id
        while next_id is not None:
            record = self.get(owner, next_id)
            if record is None and fallback is not None:
                record = fallback.get(owner, next_id)
            if record is None:
                raise NotFound(
                    f"previous response with id {next_id!r} not found",
                    param="previous_response_id",
                )
            turns.append(record)
            next_id = record.previous_id
        items: list[Item] = []
        for record in reversed(turns):
            items.extend(record.items())
        return items

    def delete(self, owner: Owner, response_id: str) -> bool:
        if self.get(owner, response_id) is None:
            return False
        record = self._cache.pop(response_id, None)
        if record is not None:
            self._cached -= record.size
        if self._writer is not None:
            self._unwritten.pop(response_id, None)
            self._deleted.add(response_id)
            self._pending.append(response_id)
            self._wake.set()
        return True

    def _remember(self, record: StoredResponse) -> None:
        cache = self._cache
        old = cache.pop(record.id, None)
        if old is not None:
            self._cached -= old.size
        if record.size > self._cache_bytes:
            return
        cache[record.id] = record
        self._cached += record.size
        while self._cached > self._cache_bytes:
            _, evicted = cache.popitem(last=False)
            self._cached -= evicted.size

    def _expired(self, record: StoredResponse) -> bool:
        return record.created_at < time.time() - self._retention

    def _read(self, response_id: str) -> StoredResponse | None:
        if self._reader is None or response_id in self._deleted:
            return None
        row = self._reader.execute(_SELECT, (response_id,)).fetchone()
        return None if row is None else _record(row)

    # --- the writer task: the only code that takes from ``_pending`` -----------------------------

    async def _run(self) -> None:
        while not self._closing or self._pending:
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_SECONDS):
                        await self._wake.wait()
            self._wake.clear()
            try:
                if self._pending:
                    await self._write()
                if time.monotonic() - self._pruned_at >= PRUNE_SECONDS:
                    await self._prune()
            except sqlite3.Error as exc:
                # Kept in memory and retried next tick: a locked or briefly full database
                # must not lose what the cache still answers from.
                log.error("stored responses: write failed (%s); retrying", exc)
                if self._closing:
                    return
                await asyncio.sleep(FLUSH_SECONDS)

    async def _write(self) -> None:
        writer = self._writer
        assert writer is not None
        batch = list(self._pending)
        # Inserts before deletes: ids are never reused, so a delete can only follow its insert.
        rows = [_row(entry) for entry in batch if not isinstance(entry, str)]
        gone = [(entry,) for entry in batch if isinstance(entry, str)]
        await writer.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                await writer.executemany(_INSERT, rows)
            if gone:
                await writer.executemany(_DELETE, gone)
            await writer.execute("COMMIT")
        except BaseException:
            if writer.in_transaction:
                await writer.execute("ROLLBACK")
            raise
        for _ in batch:
            entry = self._pending.popleft()
            if isinstance(entry, str):
                self._deleted.discard(entry)
            elif self._unwritten.get(entry.id) is entry:
                del self._unwritten[entry.id]

    async def _prune(self) -> None:
        writer = self._writer
        assert writer is not None
        self._pruned_at = time.monotonic()
        cutoff = time.time() - self._retention
        await writer.execute("DELETE FROM stored_responses WHERE created_at < ?", (cutoff,))
        await writer.execute(_OVER_CAP, (self._max_bytes,))

    async def stop(self) -> None:
        """Write what is pending, then close. Safe to call twice."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(task, 5.0)
            except Exception:
                log.exception("stored responses: writer failed at shutdown")
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _row(record: StoredResponse) -> Sequence[Any]:
    owner = record.owner
    return (
        record.id,
        owner.key_id,
        owner.agent_id,
        record.created_at,
        record.previous_id,
        record.model,
        record.input,
        record.response,
        record.size,
    )


def _record(row: Sequence[Any]) -> StoredResponse:
    return StoredResponse(
        id=row[0],
        owner=Owner(row[1], row[2]),
        created_at=row[3],
        previous_id=row[4],
        model=row[5],
        input=bytes(row[6]),
        response=bytes(row[7]),
    )
