"""Stored responses in SQLite, the file of ``server.database``: written in batches on
aiosqlite's thread, like the usage log (gateway/usage.py), and read on a cache miss by one
primary-key read on a connection of its own, tens of microseconds, cheaper than a hop to a
thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from gateway import db
from gateway.migrations import migrate
from gateway.responses_store.backend import Listener, Read
from gateway.responses_store.records import Owner, StoredResponse

COLUMNS = "id, key_id, agent_id, created_at, previous_id, model, input, response, bytes"
_INSERT = f"INSERT OR REPLACE INTO stored_responses ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
_SELECT = f"SELECT {COLUMNS} FROM stored_responses WHERE id = ?"
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


class SqliteBackend:
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: str) -> None:
        self._path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self.read_inline: Read | None = self.read

    async def open(self, listener: Listener) -> None:
        # One machine, one store: nothing else deletes behind this gateway's back.
        self._writer = await db.connect(self._path)
        await migrate(self._writer)
        reader = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only = ON")
        self._reader = reader

    def read(self, response_id: str) -> StoredResponse | None:
        if self._reader is None:
            return None
        row = self._reader.execute(_SELECT, (response_id,)).fetchone()
        return None if row is None else record_of(row)

    async def chain(self, response_id: str) -> list[StoredResponse]:
        found: list[StoredResponse] = []
        next_id: str | None = response_id
        while next_id is not None and (record := self.read(next_id)) is not None:
            found.append(record)
            next_id = record.previous_id
        return found

    async def write(self, records: list[StoredResponse], gone: list[str]) -> None:
        writer = self._writer
        assert writer is not None
        await writer.execute("BEGIN IMMEDIATE")
        try:
            if records:
                await writer.executemany(_INSERT, [row_of(record) for record in records])
            if gone:
                await writer.executemany(_DELETE, [(response_id,) for response_id in gone])
            await writer.execute("COMMIT")
        except BaseException:
            if writer.in_transaction:
                await writer.execute("ROLLBACK")
            raise

    async def prune(self, cutoff: float, max_bytes: int) -> None:
        writer = self._writer
        assert writer is not None
        await writer.execute("DELETE FROM stored_responses WHERE created_at < ?", (cutoff,))
        await writer.execute(_OVER_CAP, (max_bytes,))

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def row_of(record: StoredResponse) -> tuple[Any, ...]:
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


def record_of(row: Sequence[Any]) -> StoredResponse:
    return StoredResponse(
        id=row[0],
        owner=Owner(row[1], row[2]),
        created_at=row[3],
        previous_id=row[4],
        model=row[5],
        input=bytes(row[6]),
        response=bytes(row[7]),
    )
