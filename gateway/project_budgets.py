"""Budgets of a project (seed 004's ``microdao_id``), stored beside the keys in SQLite.

A request that names a project (``metadata.microdao_id``/``metadata.project`` or
``X-Project-Id``) is charged to the project's budget as well as its key's. Like keys, the
``project_budgets`` table (migration 4) is the source of truth and running gateways refresh
from the rows changed since their last look (gateway/keys.py's ``KeyCache``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.dbapi import Connection


@dataclass(frozen=True, slots=True)
class ProjectBudget:
    project: str
    budget_usd: float
    # None: a lifetime budget (gateway/periods.py).
    period: str | None
    updated_at: float
    removed_at: float | None = None
    # What the usage log said the project had spent in its current period when this row was
    # read: where a gateway starts counting from when the budget first appears.
    spent_usd: float = 0.0
    as_of: float = 0.0

    @property
    def active(self) -> bool:
        return self.removed_at is None


_COLUMNS = "project, budget_usd, budget_period, updated_at, removed_at"


def set_budget(
    connection: Connection, project: str, budget_usd: float, period: str | None
) -> ProjectBudget:
    """Create or replace a project's budget (a removed one comes back)."""
    now = time.time()
    connection.execute(
        "INSERT INTO project_budgets (project, budget_usd, budget_period, created_at, updated_at,"
        " removed_at) VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (project) DO UPDATE SET"
        " budget_usd = excluded.budget_usd, budget_period = excluded.budget_period,"
        " updated_at = excluded.updated_at, removed_at = NULL",
        (project, budget_usd, period, now, now),
    )
    connection.commit()
    return ProjectBudget(project, budget_usd, period, now)


def remove_budget(connection: Connection, project: str) -> bool:
    now = time.time()
    cursor = connection.execute(
        "UPDATE project_budgets SET removed_at = ?, updated_at = ?"
        " WHERE project = ? AND removed_at IS NULL",
        (now, now, project),
    )
    connection.commit()
    return cursor.rowcount > 0


def list_budgets(connection: Connection) -> list[ProjectBudget]:
    rows = connection.execute(
        f"SELECT {_COLUMNS} FROM project_budgets WHERE removed_at IS NULL ORDER BY project"
    ).fetchall()
    return [budget_of(row) for row in rows]


def changed_since(connection: Connection, since: float) -> list[tuple[Any, ...]]:
    return connection.execute(
        f"SELECT {_COLUMNS} FROM project_budgets WHERE updated_at >= ? ORDER BY updated_at",
        (since,),
    ).fetchall()


def budget_of(row: tuple[Any, ...], spent_usd: float = 0.0, as_of: float = 0.0) -> ProjectBudget:
    project, budget, period, updated, removed = row
    return ProjectBudget(
        project=str(project),
        budget_usd=float(budget),
        period=str(period) if period is not None else None,
        updated_at=float(updated),
        removed_at=float(removed) if removed is not None else None,
        spent_usd=spent_usd,
        as_of=as_of,
    )
