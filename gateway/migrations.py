"""The database schema, as append-only numbered migrations recorded in ``_migrations``.

A released migration never changes: the schema moves on by appending a function to
``MIGRATIONS``. Each runs once, in order, in its own transaction together with the row that
records it, so a crash half-way leaves the database at the previous number.

To add one: write ``async def mNNN_what(db: Schema)`` with the next number and append it to
``MIGRATIONS``; the same function builds SQLite and PostgreSQL databases (see ``Schema``).
``tests/test_migrations.py`` asserts the schema the whole list produces.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiosqlite

from gateway.errors import MigrationError

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]


class Schema(Protocol):
    """What a migration of ``MIGRATIONS`` may use: ``execute`` of DDL in SQLite's spelling.

    The same functions build a PostgreSQL database (gateway/postgres.py passes its own
    ``Schema``, which turns the few SQLite types into PostgreSQL's: gateway/dialect.py), so
    they take this, not ``aiosqlite.Connection``, and stick to plain DDL.
    """

    def execute(self, sql: str, /) -> Awaitable[Any]: ...


# One history for both dialects.
Portable = Callable[[Schema], Awaitable[None]]


async def m001_usage(db: Schema) -> None:
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


async def m002_keys(db: Schema) -> None:
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


async def m003_engine_memory(db: Schema) -> None:
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


async def m004_budget_periods(db: Schema) -> None:
    # A key's budget may reset each day, week or month (UTC); NULL keeps it a lifetime budget.
    await db.execute("ALTER TABLE keys ADD COLUMN budget_period TEXT")
    # Budgets of a project (seed 004's microdao_id), charged alongside the key's. Rows are
    # never deleted, only marked removed, so running gateways see the removal through
    # updated_at as they see key revocations.
    await db.execute(
        """
        CREATE TABLE project_budgets (
            project TEXT PRIMARY KEY,
            budget_usd REAL NOT NULL,
            budget_period TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            removed_at REAL
        )
        """
    )
    await db.execute("CREATE INDEX project_budgets_updated ON project_budgets (updated_at)")


async def m005_stored_responses(db: Schema) -> None:
    # POST /v1/responses with store: true. The whole Response object and the request's own
    # input items, as the JSON the API shows them in; a continuation walks previous_id back.
    # key_id and agent_id own the row: another caller's read is a 404, as if it never existed.
    await db.execute(
        """
        CREATE TABLE stored_responses (
            id TEXT PRIMARY KEY,
            key_id TEXT,
            agent_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            previous_id TEXT,
            model TEXT NOT NULL,
            input BLOB NOT NULL,
            response BLOB NOT NULL,
            bytes INTEGER NOT NULL
        )
        """
    )
    # Retention and the size cap delete the oldest first.
    await db.execute("CREATE INDEX stored_responses_created ON stored_responses (created_at)")


async def m006_reasoning_tokens(db: Schema) -> None:
    # The part of completion_tokens a model spent thinking (reported by the upstream, or
    # estimated from the thinking's length when it reports none, as llama.cpp does).
    await db.execute("ALTER TABLE usage ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0")


async def m007_budget_spend(db: Schema) -> None:
    # Replicas on PostgreSQL charge the same budgets: each budget's spend in one period is one
    # row, moved only by atomic increments (gateway/budget_ledger.py). Unused on SQLite, where
    # one gateway counts in memory.
    await db.execute(
        """
        CREATE TABLE budget_spend (
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            period_start REAL NOT NULL,
            spent_usd REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (scope, name, period_start)
        )
        """
    )


async def m008_shared_memory(db: Schema) -> None:
    # The memory plugin's items when memory.backend is postgresql (gateway/plugins/memory/
    # postgres_store.py), shared by replicas. Unused on SQLite, where the sqlite-vec backend
    # keeps its own file with its own history (plugins/memory/store.py). The unit float32
    # vector is stored whole; each replica searches a copy of an agent's vectors in memory.
    # The id is an identity column on PostgreSQL, whose sequence never hands a number out twice.
    await db.execute(
        """
        CREATE TABLE memory_items (
            id INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            project TEXT NOT NULL DEFAULT '',
            channel TEXT NOT NULL DEFAULT '',
            session_id TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
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
    # The embedder the vectors came from and their size: every replica must agree on both.
    await db.execute("CREATE TABLE memory_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


# Append only. Position n (from 1) is migration number n.
MIGRATIONS: tuple[Portable, ...] = (
    m001_usage,
    m002_keys,
    m003_engine_memory,
    m004_budget_periods,
    m005_stored_responses,
    m006_reasoning_tokens,
    m007_budget_spend,
    m008_shared_memory,
)


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
