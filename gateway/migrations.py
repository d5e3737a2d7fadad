"""The database schema, as append-only numbered migrations recorded in ``_migrations``.

A released migration never changes: the schema moves on by appending a function to
``MIGRATIONS``. Each runs once, in order, in its own transaction together with the row that
records it, so a crash half-way leaves the database at the previous number.

To add one: write ``async def mNNN_what(db)`` with the next number and append it to
``MIGRATIONS``. ``tests/test_migrations.py`` asserts the schema the whole list produces.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import aiosqlite

from gateway.errors import MigrationError

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


async def m001_usage(db: aiosqlite.Connection) -> None:
    # Booleans are INTEGER 0/1; times are unix seconds (REAL) so range filters are plain
    # comparisons and strftime(..., 'unixepoch') groups by day or hour.
    await db.execute(
        """
        CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            request_id TEXT NOT NULL,
            key_id TEXT,
            agent_id TEXT NOT NULL,
            project TEXT,
            channel TEXT,
            ingress TEXT NOT NULL,
            model TEXT NOT NULL,
            role TEXT,
            provider TEXT,
            upstream_model TEXT,
            status INTEGER NOT NULL,
            stream INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            estimated INTEGER NOT NULL DEFAULT 0,
            ttft_ms REAL,
            duration_ms REAL NOT NULL,
            overhead_ms REAL NOT NULL DEFAULT 0,
            cost_usd REAL,
            notes TEXT NOT NULL DEFAULT ''
        )
        """
    )
    # The usage API filters by time range, usually narrowed to one agent or one model.
    await db.execute("CREATE INDEX usage_ts ON usage (ts)")
    await db.execute("CREATE INDEX usage_agent_ts ON usage (agent_id, ts)")
    await db.execute("CREATE INDEX usage_model_ts ON usage (model, ts)")


async def m002_keys(db: aiosqlite.Connection) -> None:
    # Virtual keys: only the SHA-256 of a secret is stored. updated_at moves on every change
    # (creation, revocation) so running gateways pick up just the changed rows.
    await db.execute(
        """
        CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL,
            allowed_models TEXT NOT NULL DEFAULT '[]',
            rpm INTEGER,
            tpm INTEGER,
            concurrent INTEGER,
            budget_usd REAL,
            trusted INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            revoked_at REAL
        )
        """
    )
    await db.execute("CREATE INDEX keys_updated ON keys (updated_at)")


async def m003_engine_memory(db: aiosqlite.Connection) -> None:
    # What each local role measured after its last load, so the scheduler plans with real
    # sizes from the first request after a restart. Keyed by the model and context too: a
    # changed model or context is a different size, and starts again from an estimate.
    await db.execute(
        """
        CREATE TABLE engine_memory (
            role TEXT NOT NULL,
            model TEXT NOT NULL,
            context INTEGER NOT NULL,
            measured_mb INTEGER NOT NULL,
            load_seconds REAL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (role, model, context)
        )
        """
    )


# Append only. Position n (from 1) is migration number n.
MIGRATIONS: tuple[Migration, ...] = (m001_usage, m002_keys, m003_engine_memory)


async def migrate(
    db: aiosqlite.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[str]:
    """Apply the migrations this database has not seen; return their names."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations ("
        "number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    applied: list[str] = []
    for number, migration in enumerate(migrations, 1):
        # Checked again under the write lock: two gateways starting on one database must
        # not both run the same migration.
        await db.execute("BEGIN IMMEDIATE")
        try:
            if await _record_matches(db, number, migration.__name__):
                await db.execute("COMMIT")
                continue
            await migration(db)
            await db.execute(
                "INSERT INTO _migrations (number, name, applied_at) VALUES (?, ?, ?)",
                (number, migration.__name__, time.time()),
            )
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        applied.append(migration.__name__)
    newest = await db.execute_fetchall("SELECT MAX(number) FROM _migrations")
    latest = next(iter(newest))[0] or 0
    if latest > len(migrations):
        raise MigrationError(
            f"the database is at migration {latest} but this turnout knows {len(migrations)}: "
            "it was written by a newer version"
        )
    return applied


async def _record_matches(db: aiosqlite.Connection, number: int, name: str) -> bool:
    """Whether migration ``number`` already ran; an edited history is an error, not a re-run."""
    rows = list(
        await db.execute_fetchall("SELECT name FROM _migrations WHERE number = ?", (number,))
    )
    if not rows:
        return False
    recorded: str = rows[0][0]
    if recorded != name:
        raise MigrationError(
            f"migration {number} is recorded as {recorded!r} but this turnout calls it {name!r}; "
            "migrations are append-only"
        )
    return True
