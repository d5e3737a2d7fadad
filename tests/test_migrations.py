"""The schema: append-only numbered migrations, each applied once, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from gateway import db
from gateway.errors import MigrationError
from gateway.migrations import MIGRATIONS, migrate
from gateway.usage import COLUMNS

USAGE_SCHEMA = [
    # (name, type, not null)
    ("id", "INTEGER", False),
    ("ts", "REAL", True),
    ("request_id", "TEXT", True),
    ("key_id", "TEXT", False),
    ("agent_id", "TEXT", True),
    ("project", "TEXT", False),
    ("channel", "TEXT", False),
    ("ingress", "TEXT", True),
    ("model", "TEXT", True),
    ("role", "TEXT", False),
    ("provider", "TEXT", False),
    ("upstream_model", "TEXT", False),
    ("status", "INTEGER", True),
    ("stream", "INTEGER", True),
    ("prompt_tokens", "INTEGER", True),
    ("completion_tokens", "INTEGER", True),
    ("cached_tokens", "INTEGER", True),
    ("estimated", "INTEGER", True),
    ("ttft_ms", "REAL", False),
    ("duration_ms", "REAL", True),
    ("overhead_ms", "REAL", True),
    ("cost_usd", "REAL", False),
    ("notes", "TEXT", True),
    ("reasoning_tokens", "INTEGER", True),
]


def schema(path: Path) -> dict[str, object]:
    with sqlite3.connect(path) as conn:
        columns = [(r[1], r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(usage)")]
        indexes = {
            r[1]: [c[2] for c in conn.execute(f"PRAGMA index_info({r[1]})")]
            for r in conn.execute("PRAGMA index_list(usage)")
        }
        migrations = [r[:2] for r in conn.execute("SELECT number, name FROM _migrations")]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return {"columns": columns, "indexes": indexes, "migrations": migrations, "mode": mode}


async def migrated(path: Path) -> list[str]:
    connection = await db.connect(str(path))
    try:
        return await migrate(connection)
    finally:
        await connection.close()


RELEASED = [
    (1, "m001_usage"),
    (2, "m002_keys"),
    (3, "m003_engine_memory"),
    (4, "m004_budget_periods"),
    (5, "m005_stored_responses"),
    (6, "m006_reasoning_tokens"),
    (7, "m007_budget_spend"),
    (8, "m008_shared_memory"),
]
# The number a test's extra migration gets: after every released one.
NEXT = len(MIGRATIONS) + 1
BUDGET_SPEND_SCHEMA = [
    ("scope", "TEXT", True),
    ("name", "TEXT", True),
    ("period_start", "REAL", True),
    ("spent_usd", "REAL", True),
    ("updated_at", "REAL", True),
]
ENGINE_MEMORY_SCHEMA = [
    ("role", "TEXT", True),
    ("model", "TEXT", True),
    ("context", "INTEGER", True),
    ("measured_mb", "INTEGER", True),
    ("load_seconds", "REAL", False),
    ("updated_at", "REAL", True),
]
KEYS_SCHEMA = [
    ("id", "TEXT", False),
    ("name", "TEXT", True),
    ("hash", "TEXT", True),
    ("agent_id", "TEXT", True),
    ("allowed_models", "TEXT", True),
    ("rpm", "INTEGER", False),
    ("tpm", "INTEGER", False),
    ("concurrent", "INTEGER", False),
    ("budget_usd", "REAL", False),
    ("trusted", "INTEGER", True),
    ("created_at", "REAL", True),
    ("updated_at", "REAL", True),
    ("revoked_at", "REAL", False),
    ("budget_period", "TEXT", False),
]
STORED_RESPONSES_SCHEMA = [
    ("id", "TEXT", False),
    ("key_id", "TEXT", False),
    ("agent_id", "TEXT", True),
    ("created_at", "REAL", True),
    ("previous_id", "TEXT", False),
    ("model", "TEXT", True),
    ("input", "BLOB", True),
    ("response", "BLOB", True),
    ("bytes", "INTEGER", True),
]
SHARED_MEMORY_SCHEMA = [
    ("id", "INTEGER", False),
    ("agent_id", "TEXT", True),
    ("kind", "TEXT", True),
    ("project", "TEXT", True),
    ("channel", "TEXT", True),
    ("session_id", "TEXT", True),
    ("created_at", "REAL", True),
    ("embedding", "BLOB", True),
    ("content", "TEXT", True),
    ("meta", "TEXT", True),
]
PROJECT_BUDGETS_SCHEMA = [
    ("project", "TEXT", False),
    ("budget_usd", "REAL", True),
    ("budget_period", "TEXT", False),
    ("created_at", "REAL", True),
    ("updated_at", "REAL", True),
    ("removed_at", "REAL", False),
]


async def test_a_new_database_gets_the_usage_table_its_indexes_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "turnout.db"
    assert await migrated(path) == [name for _, name in RELEASED]
    found = schema(path)
    assert found["columns"] == USAGE_SCHEMA
    assert found["indexes"] == {
        "usage_model_ts": ["model", "ts"],
        "usage_agent_ts": ["agent_id", "ts"],
        "usage_ts": ["ts"],
    }
    assert found["migrations"] == RELEASED
    assert found["mode"] == "wal"
    with sqlite3.connect(path) as conn:
        keys = [(r[1], r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(keys)")]
    assert keys == KEYS_SCHEMA
    with sqlite3.connect(path) as conn:
        memory = [
            (r[1], r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(engine_memory)")
        ]
    assert memory == ENGINE_MEMORY_SCHEMA
    with sqlite3.connect(path) as conn:
        projects = [
            (r[1], r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(project_budgets)")
        ]
    assert projects == PROJECT_BUDGETS_SCHEMA
    with sqlite3.connect(path) as conn:
        stored = [
            (r[1], r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(stored_responses)")
        ]
        stored_indexes = [r[1] for r in conn.execute("PRAGMA index_list(stored_responses)")]
    assert stored == STORED_RESPONSES_SCHEMA
    assert "stored_responses_created" in stored_indexes
    with sqlite3.connect(path) as conn:
        spend = [(r[1], r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(budget_spend)")]
    assert spend == BUDGET_SPEND_SCHEMA
    with sqlite3.connect(path) as conn:
        shared = [(r[1], r[2], bool(r[3])) for r in conn.execute("PRAGMA table_info(memory_items)")]
        shared_indexes = {r[1] for r in conn.execute("PRAGMA index_list(memory_items)")}
        meta = [r[1] for r in conn.execute("PRAGMA table_info(memory_meta)")]
    assert shared == SHARED_MEMORY_SCHEMA
    assert {"memory_items_agent", "memory_items_channel", "memory_items_session"} <= shared_indexes
    assert meta == ["key", "value"]


async def test_running_the_migrations_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "turnout.db"
    await migrated(path)
    before = schema(path)
    assert await migrated(path) == []
    assert schema(path) == before


async def test_every_usage_record_field_has_a_column() -> None:
    assert set(COLUMNS) <= {name for name, _, _ in USAGE_SCHEMA}


def test_migrations_are_numbered_by_their_position() -> None:
    # The next engineer appends m002_keys; a gap or a reorder is caught here first.
    for number, migration in enumerate(MIGRATIONS, 1):
        assert migration.__name__.startswith(f"m{number:03d}_"), migration.__name__


async def test_a_new_migration_runs_once_on_a_database_that_has_the_old_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "turnout.db"
    await migrated(path)
    runs: list[int] = []

    async def m004_notes(connection: aiosqlite.Connection) -> None:
        runs.append(1)
        await connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")

    m004_notes.__name__ = f"m{NEXT:03d}_notes"

    connection = await db.connect(str(path))
    try:
        assert await migrate(connection, [*MIGRATIONS, m004_notes]) == [m004_notes.__name__]
        assert await migrate(connection, [*MIGRATIONS, m004_notes]) == []
    finally:
        await connection.close()
    assert runs == [1]
    assert schema(path)["migrations"] == [*RELEASED, (NEXT, m004_notes.__name__)]


async def test_a_failing_migration_leaves_the_database_at_the_previous_number(
    tmp_path: Path,
) -> None:
    path = tmp_path / "turnout.db"

    async def m004_broken(connection: aiosqlite.Connection) -> None:
        await connection.execute("CREATE TABLE half (id INTEGER)")
        await connection.execute("THIS IS NOT SQL")

    connection = await db.connect(str(path))
    try:
        with pytest.raises(sqlite3.OperationalError):
            await migrate(connection, [*MIGRATIONS, m004_broken])
    finally:
        await connection.close()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half" not in tables
    assert schema(path)["migrations"] == RELEASED


async def test_an_edited_history_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "turnout.db"
    await migrated(path)

    async def m001_something_else(connection: aiosqlite.Connection) -> None:
        raise AssertionError("must not run")

    connection = await db.connect(str(path))
    try:
        with pytest.raises(MigrationError, match="append-only"):
            await migrate(connection, [m001_something_else])
    finally:
        await connection.close()


async def test_a_database_from_a_newer_turnout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "turnout.db"
    await migrated(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO _migrations VALUES (?, 'm999_future', 0)", (NEXT,))
    with pytest.raises(MigrationError, match="newer version"):
        await migrated(path)
