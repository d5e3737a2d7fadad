"""Budgets shared by replicas on PostgreSQL: each budget's spend this period in one row.

On SQLite one gateway owns the database and counts spend in memory (gateway/budget.py). On
PostgreSQL several replicas charge the same budgets, so the spend lives in ``budget_spend``
(migration 7), one row per (scope, name, period start), and moves only by ``spent_usd =
spent_usd + ?``: an atomic increment, so no replica's charge overwrites another's.

Admission reads the row of a budgeted caller (one indexed point query, only for keys and
projects with a budget) and adds the charges this replica has not applied yet, so a budget
spent through several replicas stops where it would on one. Charges are applied by one task,
off the request path, coalesced per row. While the database is down, reads answer None (the
caller falls back to the replica's own count) for a backoff, and charges wait in memory to be
applied when it returns: an outage neither blocks a request nor loses spend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from gateway.dialect import postgres_params
from gateway.postgres import open_raw

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("turnout.budgets")
T = TypeVar("T")

Scope = Literal["key", "project"]
# One budget's spend in one period: (scope, key id or project, the period's start).
Slot = tuple[Scope, str, float]

# An admission read that takes longer than this is abandoned (the replica's own count
# decides): a database that hangs must not hold requests.
READ_TIMEOUT = 0.5
# After a failed read or write, the database is left alone this long.
BACKOFF = 2.0

_COLUMN: dict[Scope, str] = {"key": "key_id", "project": "project"}
_SELECT = postgres_params(
    "SELECT spent_usd FROM budget_spend WHERE scope = ? AND name = ? AND period_start = ?"
)
_ADD = postgres_params(
    "UPDATE budget_spend SET spent_usd = spent_usd + ?, updated_at = ?"
    " WHERE scope = ? AND name = ? AND period_start = ?"
)
# A row appears with what the usage log says was spent before it existed (budgets older
# than the ledger, or a database that was SQLite's); two replicas seeding at once both
# compute the same sum and one insert wins.
_SEEDS = {
    scope: postgres_params(
        "INSERT INTO budget_spend (scope, name, period_start, spent_usd, updated_at)"
        " SELECT ?, ?, ?, COALESCE(SUM(cost_usd), 0), ? FROM usage"
        f" WHERE {column} = ? AND ts >= ? AND cost_usd IS NOT NULL"
        " ON CONFLICT (scope, name, period_start) DO NOTHING"
    )
    for scope, column in _COLUMN.items()
}


class SpendLedger:
    """The shared spend rows of one PostgreSQL database, read at admission, charged after."""

    def __init__(self, url: str) -> None:
        self._url = url
        # Reads and writes on threads (and connections) of their own: a slow batch of
        # charges never delays an admission read.
        self._reader = _Worker(url, "turnout-budget-read")
        self._writer = _Worker(url, "turnout-budget-write")
        self._pending: dict[Slot, float] = {}
        self._applying: dict[Slot, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down_until = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._apply_forever(), name="budget ledger")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # What is still pending gets one try: a clean shutdown loses no charge.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._apply_pending(), BACKOFF)
        await self._reader.close()
        await self._writer.close()

    def charge(self, slot: Slot, usd: float) -> None:
        self._pending[slot] = self._pending.get(slot, 0.0) + usd
        self._wake.set()

    def unapplied(self, slot: Slot) -> float:
        """Charged here, not yet in the row."""
        return self._pending.get(slot, 0.0) + self._applying.get(slot, 0.0)

    async def spent(self, slot: Slot) -> float | None:
        """The slot's spend across every replica; None while the database cannot answer."""
        if time.monotonic() < self._down_until:
            return None
        try:
            stored = await asyncio.wait_for(self._reader.call(_read, slot), READ_TIMEOUT)
        except Exception as exc:  # any failure: the replica's own count decides
            self._lost("read", exc)
            return None
        return stored + self.unapplied(slot)

    async def _apply_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._apply_pending()
            except Exception as exc:  # kept, and retried after the backoff
                self._lost("charge", exc)
                await asyncio.sleep(BACKOFF)
                self._wake.set()

    async def _apply_pending(self) -> None:
        if not self._pending:
            return
        self._applying, self._pending = self._pending, {}
        try:
            await self._writer.call(_add, self._applying)
        except BaseException:
            for slot, usd in self._applying.items():
                self._pending[slot] = self._pending.get(slot, 0.0) + usd
            raise
        finally:
            self._applying = {}

    def _lost(self, what: str, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning(
                "budget ledger: %s failed (%s: %s); each replica counts alone for now",
                what,
                exc.__class__.__name__,
                exc,
            )
        self._down_until = time.monotonic() + BACKOFF


class _Worker:
    """One connection on one thread; a broken connection is reopened on the next call."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._connection: psycopg.Connection[Any] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name)

    async def call(self, work: Callable[[psycopg.Connection[Any], Any], T], arg: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._run, work, arg)

    def _run(self, work: Callable[[psycopg.Connection[Any], Any], T], arg: Any) -> T:
        if self._connection is None or self._connection.closed:
            # Autocommit: each call's work is one explicit transaction.
            self._connection = open_raw(self._url, autocommit=True)
        try:
            return work(self._connection, arg)
        except BaseException:
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                connection.close()
            raise

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=False)

    def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


def _read(connection: psycopg.Connection[Any], slot: Slot) -> float:
    with connection.transaction():
        row = connection.execute(_SELECT, slot).fetchone()
        if row is None:
            _seed(connection, slot)
            row = connection.execute(_SELECT, slot).fetchone()
    return float(row[0]) if row is not None else 0.0


def _add(connection: psycopg.Connection[Any], charges: dict[Slot, float]) -> None:
    now = time.time()
    with connection.transaction():
        for slot, usd in charges.items():
            if connection.execute(_ADD, (usd, now, *slot)).rowcount == 0:
                _seed(connection, slot)
                connection.execute(_ADD, (usd, now, *slot))


def _seed(connection: psycopg.Connection[Any], slot: Slot) -> None:
    scope, name, start = slot
    connection.execute(_SEEDS[scope], (scope, name, start, time.time(), name, start))
