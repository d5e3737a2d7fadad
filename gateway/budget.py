"""What keys and projects with a budget have spent this period: loaded from the usage log at
start, then counted in memory as requests end, so the admission check is a dict lookup.

A key's budget and a request's project's budget (gateway/project_budgets.py) are both
charged; either one used up refuses the request. A period (gateway/periods.py) starts the
count again from zero at its UTC boundary.

On PostgreSQL the replicas share the spend (gateway/budget_ledger.py): admission asks the
shared row too (``shared_refusal``), and every charge is also applied there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

from gateway.budget_ledger import Slot, SpendLedger
from gateway.config.schema import Price
from gateway.dialect import is_postgres
from gateway.keys import KeyCache, KeyRecord, connect
from gateway.periods import NOUNS, Window, period_start
from gateway.pricing import cost
from gateway.project_budgets import ProjectBudget
from gateway.spend import spent_since
from gateway.usage import UsageRecord


class Budgets:
    def __init__(self, keys: KeyCache, prices: Mapping[str, Price]) -> None:
        self._keys = keys
        self._prices = prices
        # Spend this period per key with a budget.
        self._key_windows: dict[str, Window] = {}
        # Spend this period per project with a budget, with the budget row it was opened for:
        # a changed row (a new amount or period) opens a new window from the spend logged then.
        self._project_windows: dict[str, tuple[ProjectBudget, Window]] = {}
        # The spend shared with other replicas; None on SQLite (one gateway owns the file).
        self.ledger: SpendLedger | None = None

    async def load(self, database: str) -> None:
        records = [r for r in self._keys.records() if r.budget_usd is not None]
        now = time.time()
        spent = await asyncio.to_thread(_spent_by_key, database, records, now)
        self._key_windows = {
            r.id: Window.opened(r.budget_period, now, spent.get(r.id, 0.0)) for r in records
        }
        if is_postgres(database) and self.ledger is None:
            self.ledger = SpendLedger(database)
            self.ledger.start()

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.close()
            self.ledger = None

    async def shared_refusal(self, key_id: str | None, project: str | None) -> str | None:
        """``refusal`` against the spend of every replica (one read per budget; the ledger
        answers None while the database is down, and this replica's own count stands)."""
        ledger = self.ledger
        if ledger is None:
            return None
        now = time.time()
        if key_id is not None:
            slot = self._key_slot(key_id, now)
            record = self._keys.by_id(key_id)
            if slot is not None and record is not None and record.budget_usd is not None:
                spent = await ledger.spent(slot)
                if spent is not None and record.budget_usd - spent <= 0:
                    return f"key {key_id} has used up its budget{self._period_of_key(key_id)}"
        budget = self._keys.projects.get(project) if project is not None else None
        if budget is not None:
            spent = await ledger.spent(
                ("project", budget.project, period_start(budget.period, now))
            )
            if spent is not None and budget.budget_usd - spent <= 0:
                return f"project {project!r} has used up its budget{_for(budget.period)}"
        return None

    def refusal(self, key_id: str | None, project: str | None) -> str | None:
        """Why a request must be refused for its budgets, or None (in memory, no I/O)."""
        if key_id is not None:
            left = self.left(key_id)
            if left is not None and left <= 0:
                return f"key {key_id} has used up its budget{self._period_of_key(key_id)}"
        if project is not None and self._keys.projects:
            window = self._project_window(project)
            if window is not None:
                budget, spent = window
                if budget.budget_usd - spent.spent(time.time()) <= 0:
                    return f"project {project!r} has used up its budget{_for(budget.period)}"
        return None

    def left(self, key_id: str) -> float | None:
        """USD a key may still spend this period; None when it has no budget."""
        record = self._keys.by_id(key_id)
        if record is None or record.budget_usd is None:
            return None
        window = self._key_windows.get(key_id)
        if window is None:
            return record.budget_usd
        return record.budget_usd - window.spent(time.time())

    def spent(self, key_id: str) -> float | None:
        """USD a key with a budget has spent this period, as this gateway counts it; None
        with replicas (the admin API then sums the shared usage log: all of them)."""
        if self.ledger is not None:
            return None
        window = self._key_windows.get(key_id)
        return window.spent(time.time()) if window is not None else None

    def project_spent(self, project: str) -> float | None:
        if self.ledger is not None:
            return None
        window = self._project_window(project)
        return window[1].spent(time.time()) if window is not None else None

    def charge(self, record: UsageRecord) -> None:
        """Prices the row of a key or project with a budget and counts it as spent.

        Other rows are priced by the usage writer, off the request path.
        """
        key = self._key_window(record.key_id) if record.key_id is not None else None
        project = None
        if record.project is not None and self._keys.projects:
            project = self._project_window(record.project)
        if (key is None and project is None) or not self._prices:
            return
        record.cost_usd = cost(
            self._prices,
            record.model,
            record.upstream_model,
            record.prompt_tokens,
            record.completion_tokens,
            record.cached_tokens,
        )
        if record.cost_usd:
            now = time.time()
            if key is not None:
                key.add(record.cost_usd, now)
            if project is not None:
                project[1].add(record.cost_usd, now)
            if self.ledger is not None:
                self._charge_shared(record, record.cost_usd, now)

    def _charge_shared(self, record: UsageRecord, usd: float, now: float) -> None:
        assert self.ledger is not None
        key = self._key_slot(record.key_id, now) if record.key_id is not None else None
        if key is not None:
            self.ledger.charge(key, usd)
        budget = self._keys.projects.get(record.project) if record.project is not None else None
        if budget is not None:
            self.ledger.charge(("project", budget.project, period_start(budget.period, now)), usd)

    def _key_slot(self, key_id: str, now: float) -> Slot | None:
        record = self._keys.by_id(key_id)
        if record is None or record.budget_usd is None:
            return None
        return ("key", key_id, period_start(record.budget_period, now))

    def _key_window(self, key_id: str) -> Window | None:
        window = self._key_windows.get(key_id)
        if window is not None:
            return window
        record = self._keys.by_id(key_id)
        if record is None or record.budget_usd is None:
            return None
        # A key created since start: it has spent nothing yet.
        window = self._key_windows[key_id] = Window.opened(record.budget_period, time.time())
        return window

    def _project_window(self, project: str) -> tuple[ProjectBudget, Window] | None:
        budget = self._keys.projects.get(project)
        if budget is None:
            return None
        held = self._project_windows.get(project)
        if held is None or held[0].updated_at != budget.updated_at:
            window = Window.opened(budget.period, budget.as_of, budget.spent_usd)
            held = self._project_windows[project] = (budget, window)
        return held

    def _period_of_key(self, key_id: str) -> str:
        record = self._keys.by_id(key_id)
        return _for(record.budget_period if record is not None else None)


def _for(period: str | None) -> str:
    return f" for this {NOUNS[period]}" if period is not None else ""


def _spent_by_key(database: str, records: list[KeyRecord], now: float) -> dict[str, float]:
    """Each key's spend since its period began, from the usage log (budgets survive restarts)."""
    if not records or database == ":memory:":
        return {}
    if not is_postgres(database) and not Path(database).exists():
        return {}
    connection = connect(database, prepare=False)
    try:
        starts = {r.id: period_start(r.budget_period, now) for r in records}
        return spent_since(connection, "key_id", starts)
    finally:
        connection.close()
