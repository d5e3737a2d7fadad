"""Virtual API keys: stored hashed in SQLite, looked up from memory on the request path.

The ``keys`` table (migration 2) is the source of truth (``turnout keys`` writes it directly, with or without a
running gateway); each gateway keeps every active key in a dict by hash and refreshes it from
the rows changed since its last look, so a revocation takes effect within ``refresh_seconds``.
Only SHA-256 hashes are stored: a leaked database leaks no usable key.
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
from pathlib import Path
from typing import Any

from gateway.config.schema import Limits

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

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def connect(path: str, prepare: bool = True) -> sqlite3.Connection:
    """A short-lived connection for the CLI and the refresher (never on the request path).

    ``prepare`` brings the schema up to date first (the migrations in gateway/migrations.py);
    the refresher skips it, the gateway having done it at start.
    """
    if prepare:
        from gateway.db import prepare_sync

        prepare_sync(path)
    return sqlite3.connect(path, timeout=10)


def create_key(
    connection: sqlite3.Connection,
    name: str,
    agent_id: str,
    allowed_models: tuple[str, ...] = (),
    limits: Limits | None = None,
    budget_usd: float | None = None,
    trusted: bool = False,
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
    )
    connection.execute(
        "INSERT INTO keys (id, name, hash, agent_id, allowed_models, rpm, tpm, concurrent, budget_usd,"
        " trusted, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        ),
    )
    connection.commit()
    return secret, record


def revoke_key(connection: sqlite3.Connection, key_id: str) -> bool:
    now = time.time()
    cursor = connection.execute(
        "UPDATE keys SET revoked_at = ?, updated_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
        (now, now, key_id, key_id),
    )
    connection.commit()
    return cursor.rowcount > 0


_COLUMNS = "id, name, hash, agent_id, allowed_models, rpm, tpm, concurrent, budget_usd, trusted, created_at, revoked_at, updated_at"


def list_keys(connection: sqlite3.Connection, include_revoked: bool = False) -> list[KeyRecord]:
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
    )
    return str(key_hash), record


class KeyCache:
    """Active keys by hash, for the request path: a dict lookup, no I/O."""

    def __init__(self, database: str, refresh_seconds: float = 2.0) -> None:
        self._database = database
        self._refresh = refresh_seconds
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._ever = False
        self._seen_until = 0.0
        self._task: asyncio.Task[None] | None = None
        # Its own thread, never the loop's default executor: that one is shared with code we do
        # not control, and a few stuck threads there once held a revocation back for 24 s.
        self._thread: ThreadPoolExecutor | None = None

    def lookup(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_key(secret))

    def by_id(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

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

    async def _fetch_changed(self) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._fetch, self._seen_until)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                self._apply(await self._fetch_changed())
            except sqlite3.Error as exc:
                log.warning("refreshing keys from %s failed: %s", self._database, exc)

    def _fetch(self, since: float) -> list[tuple[Any, ...]]:
        """Rows changed since ``since`` (runs in a worker thread: sqlite3 blocks)."""
        connection = connect(self._database, prepare=False)
        try:
            return connection.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE updated_at >= ? ORDER BY updated_at", (since,)
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # a database no gateway has prepared yet: no keys
            raise
        finally:
            connection.close()

    def _apply(self, rows: list[tuple[Any, ...]]) -> None:
        """On the event loop thread, so the request path never sees a half-applied refresh."""
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


def spent_by_key(database: str) -> dict[str, float]:
    """USD each key has spent so far, from the usage log (budgets survive restarts)."""
    if database == ":memory:" or not Path(database).exists():
        return {}
    connection = sqlite3.connect(database, timeout=10)
    try:
        rows = connection.execute(
            "SELECT key_id, SUM(cost_usd) FROM usage WHERE key_id IS NOT NULL AND cost_usd IS NOT NULL GROUP BY key_id"
        ).fetchall()
    except sqlite3.OperationalError:
        return {}  # no usage table yet
    finally:
        connection.close()
    return {str(k): float(v) for k, v in rows}
