"""Virtual API keys: stored hashed in SQLite, looked up from memory on the request path.

The ``keys`` table (migrations 2 and 4) is the source of truth (``turnout keys`` writes it directly, with or without a
running gateway); each gateway keeps every active key in a dict by hash and refreshes it from
the rows changed since its last look, so a revocation takes effect within ``refresh_seconds``.
Project budgets (gateway/project_budgets.py) ride the same refresh. Only SHA-256 hashes are
stored: a leaked database leaks no usable key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gateway import project_budgets
from gateway.config.schema import Limits
from gateway.dbapi import Connection
from gateway.dialect import is_postgres, redacted
from gateway.periods import period_start
from gateway.project_budgets import ProjectBudget
from gateway.spend import spent_since

log = logging.getLogger("turnout.keys")

KEY_PREFIX = "sk-turnout-"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    agent_id: str
    allowed_models: tuple[str, ...]
    # None: the configured default for keys.
    limits: Limits | None
    budget_usd: float | None
    trusted: bool
    created_at: float
    revoked_at: float | None
    # When the budget starts again from zero (gateway/periods.py); None: never.
    budget_period: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def connect(path: str, prepare: bool = True) -> Connection:
    """A short-lived connection for the CLI and the refresher (never on the request path).

    ``prepare`` brings the schema up to date first (the migrations in gateway/migrations.py);
    the refresher skips it, the gateway having done it at start.
    """
    if prepare:
        from gateway.db import prepare_sync

        prepare_sync(path)
    if is_postgres(path):
        from gateway import postgres

        return postgres.connect(path)
    return sqlite3.connect(path, timeout=10)


def create_key(
    connection: Connection,
    name: str,
    agent_id: str,
    allowed_models: tuple[str, ...] = (),
    limits: Limits | None = None,
    budget_usd: float | None = None,
    trusted: bool = False,
    budget_period: str | None = None,
) -> tuple[str, KeyRecord]:
    """Store a new key; the secret is returned once and never stored."""
    secret = new_secret()
    now = time.time()
    record = KeyRecord(
        id=secrets.token_hex(6),
        name=name,
        agent_id=agent_id,
        allowed_models=allowed_models,
        limits=limits,
        budget_usd=budget_usd,
        trusted=trusted,
        created_at=now,
        revoked_at=None,
        budget_period=budget_period,
    )
    connection.execute(
        "INSERT INTO keys (id, name, hash, agent_id, allowed_models, rpm, tpm, concurrent, budget_usd,"
        " trusted, created_at, updated_at, budget_period)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.id,
            name,
            hash_key(secret),
            agent_id,
            json.dumps(list(allowed_models)),
            limits.rpm if limits else None,
            limits.tpm if limits else None,
            limits.concurrent if limits else None,
            budget_usd,
            int(trusted),
            now,
            now,
            budget_period,
        ),
    )
    connection.commit()
    return secret, record


def revoke_key(connection: Connection, key_id: str) -> bool:
    now = time.time()
    cursor = connection.execute(
        "UPDATE keys SET revoked_at = ?, updated_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
        (now, now, key_id, key_id),
    )
    connection.commit()
    return cursor.rowcount > 0


# updated_at last: the refresher reads it as row[-1].
_COLUMNS = (
    "id, name, hash, agent_id, allowed_models, rpm, tpm, concurrent, budget_usd, trusted,"
    " created_at, revoked_at, budget_period, updated_at"
)


def list_keys(connection: Connection, include_revoked: bool = False) -> list[KeyRecord]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    rows = connection.execute(f"SELECT {_COLUMNS} FROM keys{where} ORDER BY created_at").fetchall()
    return [_record(row)[1] for row in rows]


def _record(row: tuple[Any, ...]) -> tuple[str, KeyRecord]:
    (
        key_id,
        name,
        key_hash,
        agent_id,
        allowed,
        rpm,
        tpm,
        concurrent,
        budget,
        trusted,
        created,
        revoked,
        period,
        _,
    ) = row
    has_limits = any(v is not None for v in (rpm, tpm, concurrent))
    limits = (
        Limits(rpm=int(rpm or 0), tpm=int(tpm or 0), concurrent=int(concurrent or 0))
        if has_limits
        else None
    )
    record = KeyRecord(
        id=str(key_id),
        name=str(name),
        agent_id=str(agent_id),
        allowed_models=tuple(json.loads(str(allowed))),
        limits=limits,
        budget_usd=float(budget) if budget is not None else None,
        trusted=bool(trusted),
        created_at=float(created),
        revoked_at=float(revoked) if revoked is not None else None,
        budget_period=str(period) if period is not None else None,
    )
    return str(key_hash), record


class KeyCache:
    """Active keys by hash, for the request path: a dict lookup, no I/O."""

    def __init__(self, database: str, refresh_seconds: float = 2.0) -> None:
        self._database = database
        self._refresh = refresh_seconds
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        # Active project budgets by project.
        self.projects: dict[str, ProjectBudget] = {}
        self._ever = False
        self._seen_until = 0.0
        self._projects_seen_until = 0.0
        self._task: asyncio.Task[None] | None = None
        # Its own thread, never the loop's default executor: that one is shared with code we do
        # not control, and a few stuck threads there once held a revocation back for 24 s.
        self._thread: ThreadPoolExecutor | None = None

    def lookup(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_key(secret))

    def by_id(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    def records(self) -> list[KeyRecord]:
        """Every active key."""
        return list(self._by_id.values())

    @property
    def any_keys(self) -> bool:
        """Has this gateway ever had keys? Revoking the last one must not reopen it to everyone."""
        return self._ever

    async def start(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="turnout-keys")
        self._apply(await self._fetch_changed())
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._thread is not None:
            self._thread.shutdown(wait=False)

    async def refresh(self) -> None:
        """Read the changes now: the admin API calls this so its own gateway applies a change
        at once (others see it within ``refresh_seconds``)."""
        if self._thread is not None:
            self._apply(await self._fetch_changed())

    async def _fetch_changed(self) -> _Changes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, self._fetch, self._seen_until, self._projects_seen_until
        )

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                self._apply(await self._fetch_changed())
            except Exception as exc:  # sqlite3's or the PostgreSQL driver's: keep the keys held
                log.warning("refreshing keys from %s failed: %s", redacted(self._database), exc)

    def _fetch(self, since: float, projects_since: float = 0.0) -> _Changes:
        """Rows changed since ``since`` (runs in a worker thread: sqlite3 blocks)."""
        connection = connect(self._database, prepare=False)
        try:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE updated_at >= ? ORDER BY updated_at", (since,)
            ).fetchall()
            return rows, _changed_projects(connection, projects_since)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [], []  # a database no gateway has prepared yet: no keys
            raise
        finally:
            connection.close()

    def _apply(self, changes: _Changes) -> None:
        """On the event loop thread, so the request path never sees a half-applied refresh."""
        rows, projects = changes
        for budget in projects:
            held = self.projects.get(budget.project)
            if held is not None and held.updated_at == budget.updated_at:
                # Read again (the look-up is ``>=`` its time), unchanged: keep the one held,
                # and with it the spend gateway/budget.py counted on it since.
                continue
            if budget.active:
                self.projects[budget.project] = budget
            else:
                self.projects.pop(budget.project, None)
            self._projects_seen_until = max(self._projects_seen_until, budget.updated_at)
        for row in rows:
            self._ever = True
            key_hash, record = _record(row)
            if record.active:
                self._by_hash[key_hash] = record
                self._by_id[record.id] = record
            else:
                self._by_hash.pop(key_hash, None)
                self._by_id.pop(record.id, None)
            self._seen_until = max(self._seen_until, float(row[-1]))


_Changes = tuple[list[tuple[Any, ...]], list[ProjectBudget]]


def _changed_projects(connection: Connection, since: float) -> list[ProjectBudget]:
    """Project budgets changed since ``since``, each with its spend so far this period."""
    rows = project_budgets.changed_since(connection, since)
    if not rows:
        return []
    now = time.time()
    starts = {str(row[0]): period_start(row[2], now) for row in rows if row[4] is None}
    spent = spent_since(connection, "project", starts)
    return [project_budgets.budget_of(row, spent.get(str(row[0]), 0.0), now) for row in rows]
