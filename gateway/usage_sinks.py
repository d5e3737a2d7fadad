"""Where the usage writer (gateway/usage.py) puts its batches: the store-specific half.

The writer owns the batching, the bound on pending rows and the retry through outages; a sink
only commits one batch, says why an attempt failed, and opens readers for the usage API. Two
sinks: SQLite here (the default), PostgreSQL in gateway/usage_postgres.py.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import aiosqlite
import msgspec

from gateway import db
from gateway.dialect import SQLITE, Dialect

log = logging.getLogger("turnout.usage")


class UsageReader(Protocol):
    """A connection for the usage API's queries (gateway/api/usage.py, events.py)."""

    @property
    def dialect(self) -> Dialect: ...

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]: ...


class UsageSink(Protocol):
    @property
    def bad_rows(self) -> tuple[type[BaseException], ...]:
        """Errors that mean the database refused the rows themselves: retrying cannot help,
        so the writer writes the batch row by row and drops the refused ones."""
        ...

    async def insert(self, rows: list[Sequence[Any]], one_by_one: bool) -> int:
        """Commit ``rows`` in one transaction; how many were refused (``one_by_one`` only)."""
        ...

    def reason(self, exc: BaseException) -> str:
        """A short label for a failed attempt, for the write-errors metric."""
        ...

    def reader(self) -> contextlib.AbstractAsyncContextManager[UsageReader]: ...

    async def close(self) -> None: ...


def error_reason(exc: BaseException) -> str:
    """A short label for why a SQLite write failed: locked, full, readonly, io or other."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "locked"
    if name.startswith("SQLITE_FULL"):
        return "full"
    if name.startswith("SQLITE_READONLY"):
        return "readonly"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")):
        return "io"
    return "other"


_encode_rows = msgspec.json.Encoder().encode


class SqliteReader:
    dialect = SQLITE

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        async with self.connection.execute(sql, params) as cursor:
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]


class SqliteSink:
    """One aiosqlite connection: batches commit on its thread."""

    bad_rows: tuple[type[BaseException], ...] = (
        sqlite3.IntegrityError,
        sqlite3.InterfaceError,
        sqlite3.ProgrammingError,
        OverflowError,
    )

    def __init__(self, connection: aiosqlite.Connection, path: str, columns: Sequence[str]) -> None:
        self._db = connection
        self._path = path
        names = ", ".join(columns)
        self._insert = f"INSERT INTO usage ({names}) VALUES ({', '.join('?' for _ in columns)})"
        # A whole batch as one JSON array bound to one parameter: a single SQLite statement
        # step, during which sqlite3 releases the GIL. executemany instead steps once per row,
        # taking the GIL back each time; against a busy event loop that made the writer fall
        # behind the load. Multi-row INSERT ... VALUES statements are one step too and cost
        # SQLite far less (58k instructions a row against 151k, counted with callgrind), but
        # sqlite3 binds their 22 parameters a row with the GIL held (~15k instructions, more
        # for None and bool values), time taken from the event loop, which is what limits a
        # gateway; the JSON is parsed on the writer's thread, on a core the loop does not use.
        self._insert_batch = (
            f"INSERT INTO usage ({names}) SELECT "
            + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
            + " FROM json_each(?)"
        )

    async def insert(self, rows: list[Sequence[Any]], one_by_one: bool) -> int:
        connection = self._db
        refused = 0
        # IMMEDIATE takes the write lock before any work, so a locked database fails here,
        # cheaply, rather than after the inserts.
        await connection.execute("BEGIN IMMEDIATE")
        try:
            if not one_by_one:
                await connection.execute(self._insert_batch, (_encode_rows(rows).decode(),))
            else:
                for row in rows:
                    try:
                        await connection.execute(self._insert, row)
                    except self.bad_rows as exc:
                        refused += 1
                        log.error("usage log: the database refused a row (%s): %r", exc, row)
            await connection.execute("COMMIT")
        except BaseException:
            # A full disk may already have rolled the transaction back.
            if connection.in_transaction:
                with contextlib.suppress(Exception):
                    await connection.execute("ROLLBACK")
            raise
        return refused

    def reason(self, exc: BaseException) -> str:
        return error_reason(exc)

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[UsageReader]:
        """A connection of its own, so a long read never holds up the writer."""
        if self._path == db.MEMORY:
            # A private in-memory database exists only on the writer's connection.
            yield SqliteReader(self._db)
            return
        connection = await db.connect(self._path, read_only=True)
        try:
            yield SqliteReader(connection)
        finally:
            await connection.close()

    async def close(self) -> None:
        await self._db.close()
