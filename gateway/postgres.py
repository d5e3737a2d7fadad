"""PostgreSQL connections (psycopg 3) behind the small interface the SQLite code already uses.

The key store, the admin API, budgets and the CLI run short synchronous queries in a worker
thread (``sqlite3`` style: ``execute(sql, params).fetchall()``, ``commit()``); ``Connection``
gives them the same on PostgreSQL, spelling the SQL for it (gateway/dialect.py). The usage
writer has its own (gateway/usage_postgres.py).

Why psycopg 3 rather than asyncpg (measured on this 2-core machine against PostgreSQL 15 on
loopback): asyncpg was faster (COPY of a 500-row usage batch 8.5 ms against 12.1 ms; a one-row
select 0.35 ms against 0.57 ms async, 0.43 ms sync), but only psycopg has a synchronous API
too, which every caller above uses, from threads, as it uses ``sqlite3``; and 41k rows/s by
COPY is far beyond what one gateway logs. The driver is imported only when a PostgreSQL URL is
opened: it is an optional extra (``turnout[postgres]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.dialect import postgres_ddl, postgres_params, redacted
from gateway.errors import MigrationError

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")
log = logging.getLogger("turnout.postgres")

# How long a connection attempt may take: a database that is down must fail fast, so the
# callers (the key refresher, the usage writer) get on with retrying.
CONNECT_TIMEOUT = 3
# Two gateways starting on one database run the migrations one after the other.
_MIGRATION_LOCK = 0x7475726E  # "turn"


class Cursor:
    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description is not None else []


class Connection:
    """``sqlite3.Connection``'s ``execute``/``commit``/``close`` on PostgreSQL, with ``?``."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.raw = connection

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return Cursor(self.raw.execute(postgres_params(sql), tuple(parameters)))

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


def open_raw(url: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A psycopg connection that fails fast when the server is down."""
    import psycopg

    # Keepalives notice a server that vanished without closing (a cable, a paused VM).
    return psycopg.connect(
        url,
        connect_timeout=CONNECT_TIMEOUT,
        autocommit=autocommit,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=3,
        keepalives_count=3,
    )


def connect(url: str, *, autocommit: bool = False) -> Connection:
    return Connection(open_raw(url, autocommit))


class Schema:
    """What a migration function sees (gateway/migrations.py): DDL in SQLite's spelling."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> None:
        # Blocking, on purpose: ``migrate`` runs the migrations inline, in a worker thread.
        self._connection.execute(postgres_ddl(sql), parameters)


Migration = Callable[[Schema], Awaitable[None]]


def migrate(url: str, migrations: Sequence[Migration]) -> list[str]:
    """The migrations this database has not seen, each in its own transaction with its record
    (PostgreSQL's DDL is transactional). Returns their names."""
    connection = connect(url, autocommit=True)
    try:
        # A session lock, so a second gateway starting at once waits, then finds them applied.
        connection.execute("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK,))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS _migrations ("
            "number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        recorded = dict(connection.execute("SELECT number, name FROM _migrations").fetchall())
        return _run_inline(_apply(connection, recorded, migrations))
    finally:
        connection.close()


def _run_inline(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end without an event loop: the migrations await nothing but
    ``Schema.execute``, which never suspends. So ``migrate`` works from any thread, whether an
    event loop runs there (a command-line tool inside a test, an embedding program) or not."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a migration awaited something other than its Schema")


async def _apply(
    connection: Connection, recorded: dict[int, str], migrations: Sequence[Migration]
) -> list[str]:
    schema, applied = Schema(connection), []
    for number, migration in enumerate(migrations, 1):
        name = migration.__name__
        if number in recorded:
            if recorded[number] != name:
                raise MigrationError(
                    f"migration {number} is recorded as {recorded[number]!r} but this turnout "
                    f"calls it {name!r}; migrations are append-only"
                )
            continue
        with connection.raw.transaction():
            await migration(schema)
            connection.execute(
                "INSERT INTO _migrations (number, name, applied_at) VALUES (?, ?, ?)",
                (number, name, time.time()),
            )
        applied.append(name)
    latest = max(recorded, default=0)
    if latest > len(migrations):
        raise MigrationError(
            f"the database is at migration {latest} but this turnout knows {len(migrations)}: "
            "it was written by a newer version"
        )
    return applied


async def prepare(url: str, migrations: Sequence[Migration]) -> list[str]:
    """``migrate`` off the event loop (psycopg's synchronous API blocks)."""
    try:
        return await asyncio.to_thread(migrate, url, migrations)
    except MigrationError:
        raise
    except Exception as exc:
        raise MigrationError(f"server.database {redacted(url)}: {exc}") from exc


# A listener that lost its connection tries again this long after (and after each failure).
RECONNECT_SECONDS = 1.0
# How long a listener waits for notifications before it looks whether it should stop.
_POLL_SECONDS = 0.5


class Listening:
    """``LISTEN channel`` on a thread of its own, from ``start`` to ``stop``: each
    notification's payload goes to ``heard`` (on that thread), and the connection is made
    again whenever it is lost. ``connected`` runs after each LISTEN: what was sent meanwhile
    went unheard, so the caller catches up there; ``lost`` runs when a connection drops.
    ``subject`` names what is listened for in log lines ("memory: other replicas' changes")."""

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        heard: Callable[[str], object],
        connected: Callable[[psycopg.Connection[Any]], object],
        lost: Callable[[], object] = lambda: None,
        subject: str,
        name: str,
    ) -> None:
        self._url = url
        self._channel = channel
        self._heard = heard
        self._connected = connected
        self._lost = lost
        self._subject = subject
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 5.0)

    def _run(self) -> None:
        stopping, subject = self._stopping, self._subject
        failing = False
        while not stopping.is_set():
            try:
                connection = open_raw(self._url, autocommit=True)
            except Exception as exc:
                if not failing:
                    log.warning("%s: cannot listen (%s); retrying", subject, exc)
                failing = True
                stopping.wait(RECONNECT_SECONDS)
                continue
            try:
                connection.execute(f"LISTEN {self._channel}")
                self._connected(connection)
                if failing:
                    log.info("%s: listening again", subject)
                failing = False
                while not stopping.is_set():
                    for notice in connection.notifies(timeout=_POLL_SECONDS):
                        self._heard(notice.payload)
            except Exception as exc:
                if not stopping.is_set():
                    log.warning("%s: notifications lost (%s); listening again", subject, exc)
                    failing = True
                    self._lost()
                    stopping.wait(RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    connection.close()


class ConnectionThread:
    """One connection on one thread of its own: ``run(call)`` runs ``call(connection)`` there,
    in a transaction. A broken connection is dropped, so the next call opens a new one
    (failing fast, ``CONNECT_TIMEOUT``, while the server is down). A ``read`` that finds its
    kept connection broken (the server restarted since) tries once more on a new
    one, so the first read after an outage does not fail for nothing; writes do not retry (a
    write may have landed before the connection broke)."""

    def __init__(self, url: str, name: str) -> None:
        import psycopg

        self._url = url
        self.unreachable = (psycopg.OperationalError, psycopg.InterfaceError)
        self._connection: psycopg.Connection[Any] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name)

    async def run(self, call: Callable[[psycopg.Connection[Any]], T], *, read: bool = False) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._call, call, read
        )

    def _call(self, call: Callable[[psycopg.Connection[Any]], T], read: bool) -> T:
        kept = self._connection is not None and not self._connection.closed
        try:
            return self._once(call)
        except self.unreachable:
            self._drop()
            if not (read and kept):
                raise
        try:
            return self._once(call)
        except self.unreachable:
            self._drop()
            raise

    def _once(self, call: Callable[[psycopg.Connection[Any]], T]) -> T:
        if self._connection is None or self._connection.closed:
            self._connection = open_raw(self._url)
        with self._connection.transaction():
            return call(self._connection)

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._drop)
        self._thread.shutdown(wait=False)
