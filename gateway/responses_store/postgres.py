"""Stored responses in PostgreSQL (``server.database: postgresql://...``), shared by replicas:
a response one replica stored, another continues, reads and deletes.

Three connections, each on a thread of its own, as the usage sink (gateway/usage_postgres.py)
uses psycopg's synchronous API: the writer (batches from the store's task, off the request
path), the reader (a cache miss: the response and every turn before it in one recursive query,
by primary key), and the listener. The listener is what lets each replica trust its cache:
every delete (the API's, retention's, the size cap's) is announced with ``NOTIFY`` in the
deleting transaction, and each replica drops the ids from memory as the notification arrives.
A listener that lost its connection may have missed some, so once it is back the replica
asks which of the ids it holds in memory still exist and forgets the others: a delete through
one replica is a 404 on every other within the time the notification takes, or, across an
outage, by the time the listener reconnects (gateway/postgres.py's ``RECONNECT_SECONDS``
after the database answers again).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.dialect import postgres_params
from gateway.migrations import MIGRATIONS
from gateway.postgres import ConnectionThread, Listening, prepare
from gateway.responses_store.backend import Listener, Read
from gateway.responses_store.records import StoredResponse
from gateway.responses_store.sqlite import COLUMNS, record_of, row_of

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("turnout.responses")
T = TypeVar("T")

CHANNEL = "turnout_stored_responses_deleted"
# A NOTIFY payload must stay under 8000 bytes: ids go space-separated in pieces this long.
_PAYLOAD_BYTES = 7000
_SNAPSHOT_SECONDS = 5.0

# Ids never repeat; a conflict is a batch that committed though its acknowledgement was lost.
_INSERT = postgres_params(
    f"INSERT INTO stored_responses ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (id) DO NOTHING"
)
_EXISTING = "SELECT id FROM stored_responses WHERE id = ANY(%s)"
_DELETE = "DELETE FROM stored_responses WHERE id = ANY(%s) RETURNING id"
_EXPIRED = "DELETE FROM stored_responses WHERE created_at < %s RETURNING id"
_OVER_CAP = """
DELETE FROM stored_responses WHERE created_at <= (
    SELECT created_at FROM (
        SELECT created_at, SUM(bytes) OVER (ORDER BY created_at DESC) AS running
        FROM stored_responses
    ) AS sized WHERE running > %s ORDER BY created_at DESC LIMIT 1
) RETURNING id
"""
_CHAIN = f"""
WITH RECURSIVE chain AS (
    SELECT {COLUMNS} FROM stored_responses WHERE id = %s
    UNION ALL
    SELECT {", ".join("s." + column.strip() for column in COLUMNS.split(","))}
    FROM stored_responses AS s JOIN chain ON s.id = chain.previous_id
)
SELECT {COLUMNS} FROM chain
"""


def payloads(response_ids: list[str]) -> list[str]:
    """``response_ids`` as NOTIFY payloads, each under the server's limit."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for response_id in response_ids:
        if current and size + len(response_id) + 1 > _PAYLOAD_BYTES:
            pieces.append(" ".join(current))
            current, size = [], 0
        current.append(response_id)
        size += len(response_id) + 1
    if current:
        pieces.append(" ".join(current))
    return pieces


class PostgresBackend:
    # Shared by replicas, so never read on the loop: a miss goes through ``chain``.
    read_inline: Read | None = None

    def __init__(self, url: str) -> None:
        import psycopg

        self._url = url
        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self._writer = ConnectionThread(url, "turnout-responses-pg-write")
        self._reader = ConnectionThread(url, "turnout-responses-pg-read")
        self._listening: Listening | None = None

    async def open(self, listener: Listener) -> None:
        await prepare(self._url, MIGRATIONS)
        loop = asyncio.get_running_loop()
        self._listening = Listening(
            self._url,
            CHANNEL,
            heard=lambda payload: loop.call_soon_threadsafe(listener.forget, payload.split()),
            # Deletes before this moment went unheard: what memory holds may be stale.
            connected=lambda connection: _revalidate(connection, loop, listener),
            subject="stored responses: deletes",
            name="turnout-responses-pg-listen",
        )
        self._listening.start()

    async def chain(self, response_id: str) -> list[StoredResponse]:
        return await self._reader.run(lambda c: _chain(c, response_id))

    async def write(self, records: list[StoredResponse], gone: list[str]) -> None:
        await self._writer.run(lambda c: _write(c, records, gone))

    async def prune(self, cutoff: float, max_bytes: int) -> None:
        await self._writer.run(lambda c: _prune(c, cutoff, max_bytes))

    async def close(self) -> None:
        if self._listening is not None:
            await self._listening.stop()
        await self._writer.close()
        await self._reader.close()


# --- on the listener's thread --------------------------------------------------------------------


def _revalidate(
    connection: psycopg.Connection[Any], loop: asyncio.AbstractEventLoop, listener: Listener
) -> None:
    """Forget what memory holds that the database no longer does (one query by primary key).
    Called with nothing missing too: ``forget`` also tells a fetch under way to read again."""
    snapshot: Future[list[str]] = Future()
    loop.call_soon_threadsafe(lambda: snapshot.set_result(listener.cached()))
    cached = snapshot.result(timeout=_SNAPSHOT_SECONDS)
    rows = connection.execute(_EXISTING, (cached,)).fetchall() if cached else []
    existing = {row[0] for row in rows}
    loop.call_soon_threadsafe(listener.forget, [i for i in cached if i not in existing])


# --- on the writer's and reader's threads, inside a transaction ----------------------------------


def _chain(connection: psycopg.Connection[Any], response_id: str) -> list[StoredResponse]:
    return [record_of(row) for row in connection.execute(_CHAIN, (response_id,)).fetchall()]


def _write(
    connection: psycopg.Connection[Any], records: list[StoredResponse], gone: list[str]
) -> None:
    if records:
        with connection.cursor() as cursor:
            cursor.executemany(_INSERT, [row_of(record) for record in records])
    if gone:
        _announce(connection, _deleted(connection, _DELETE, (gone,)))


def _prune(connection: psycopg.Connection[Any], cutoff: float, max_bytes: int) -> None:
    gone = _deleted(connection, _EXPIRED, (cutoff,))
    gone += _deleted(connection, _OVER_CAP, (max_bytes,))
    _announce(connection, gone)


def _deleted(connection: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> list[str]:
    return [row[0] for row in connection.execute(sql, params).fetchall()]


def _announce(connection: psycopg.Connection[Any], gone: list[str]) -> None:
    # Delivered when the transaction commits, to every replica listening (this one too).
    for payload in payloads(gone):
        connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
