"""Key and budget administration: the operations behind ``POST/GET/DELETE /v1/keys``,
``/v1/budgets`` and ``turnout keys``, on one SQLite connection, in the shapes both answer.

The admin API (gateway/api/keys.py) and the CLI working on the database file
(gateway/keys_stores.py) call the same functions, so a key looks the same either way. Synchronous
(sqlite3): callers on the event loop run them in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from gateway import project_budgets
from gateway.config.schema import Limits
from gateway.dbapi import Connection
from gateway.errors import BadRequest
from gateway.keys import KeyRecord, create_key, list_keys, revoke_key
from gateway.periods import Period, period_start
from gateway.project_budgets import ProjectBudget
from gateway.spend import spent_since

# Limits and amounts a person could mean; beyond them is a typo (and past SQLite's integers).
Count = Annotated[int, Meta(ge=0, le=1_000_000_000)]
Usd = Annotated[float, Meta(ge=0, le=1_000_000_000)]
Name = Annotated[str, Meta(min_length=1, max_length=128)]
# Where this gateway's own count of a budget's spend is fresher than the usage log's.
LiveSpend = Callable[[str], float | None]


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/keys``: the options of ``turnout keys create``."""

    # The agent requests with this key are logged as.
    agent: Name
    # Default: the agent.
    name: Name | None = None
    # Logical model names or globs this key may use; empty: all.
    models: list[Name] = []
    rpm: Count | None = None
    tpm: Count | None = None
    concurrent: Count | None = None
    # USD; requests beyond it are refused (429 insufficient_quota).
    budget: Usd | None = None
    # The budget starts again from zero each UTC day, week (Monday) or month; none: never.
    budget_period: Period | None = None
    # May act for other agents (X-Agent-Id, metadata.agent_id).
    trusted: bool = False


class BudgetBody(msgspec.Struct, forbid_unknown_fields=True):
    """``PUT /v1/budgets/{project}``."""

    budget: Usd
    budget_period: Period | None = None


def create(connection: Connection, new: NewKey) -> dict[str, Any]:
    """The new key's view plus its secret as ``key``: the only time the secret is shown."""
    if new.budget_period is not None and new.budget is None:
        raise BadRequest("budget_period needs a budget", param="budget_period")
    limits = None
    if any(v is not None for v in (new.rpm, new.tpm, new.concurrent)):
        limits = Limits(rpm=new.rpm or 0, tpm=new.tpm or 0, concurrent=new.concurrent or 0)
    secret, record = create_key(
        connection,
        new.name or new.agent,
        new.agent,
        tuple(new.models),
        limits,
        new.budget,
        new.trusted,
        new.budget_period,
    )
    return {**key_view(record, 0.0 if record.budget_usd is not None else None), "key": secret}


def listing(
    connection: Connection, include_revoked: bool = False, live: LiveSpend | None = None
) -> list[dict[str, Any]]:
    """Every key with what it spent in its budget's current period (all time without one)."""
    records = list_keys(connection, include_revoked)
    now = time.time()
    logged = spent_since(
        connection, "key_id", {r.id: period_start(r.budget_period, now) for r in records}
    )
    views = []
    for record in records:
        counted = live(record.id) if live is not None else None
        views.append(key_view(record, counted if counted is not None else logged.get(record.id)))
    return views


def revoke(connection: Connection, key: str) -> dict[str, Any] | None:
    """Revokes by id or name; None when no active key has either."""
    if not revoke_key(connection, key):
        return None
    return {"id": key, "revoked": True}


def set_budget(connection: Connection, project: str, body: BudgetBody) -> dict[str, Any]:
    project = checked_project(project)
    budget = project_budgets.set_budget(connection, project, body.budget, body.budget_period)
    start = period_start(budget.period, time.time())
    spent = spent_since(connection, "project", {project: start}).get(project, 0.0)
    return budget_view(budget, spent)


def budgets(connection: Connection, live: LiveSpend | None = None) -> list[dict[str, Any]]:
    found = project_budgets.list_budgets(connection)
    now = time.time()
    logged = spent_since(
        connection, "project", {b.project: period_start(b.period, now) for b in found}
    )
    views = []
    for budget in found:
        counted = live(budget.project) if live is not None else None
        spent = counted if counted is not None else logged.get(budget.project, 0.0)
        views.append(budget_view(budget, spent))
    return views


def remove_budget(connection: Connection, project: str) -> bool:
    return project_budgets.remove_budget(connection, checked_project(project))


def checked_project(project: str) -> str:
    # Requests name at most 128 characters of a project (gateway/auth.py keeps no more).
    if not project.strip() or len(project) > 128:
        raise BadRequest("project: expected 1 to 128 characters", param="project")
    return project


def key_view(record: KeyRecord, spent: float | None) -> dict[str, Any]:
    limits = record.limits
    return {
        "id": record.id,
        "name": record.name,
        "agent_id": record.agent_id,
        "allowed_models": list(record.allowed_models),
        "rpm": limits.rpm if limits else None,
        "tpm": limits.tpm if limits else None,
        "concurrent": limits.concurrent if limits else None,
        "budget_usd": record.budget_usd,
        "budget_period": record.budget_period,
        "spent_usd": round(spent or 0.0, 9),
        "trusted": record.trusted,
        "created_at": _iso(record.created_at),
        "revoked": record.revoked_at is not None,
    }


def budget_view(budget: ProjectBudget, spent: float) -> dict[str, Any]:
    return {
        "project": budget.project,
        "budget_usd": budget.budget_usd,
        "budget_period": budget.period,
        "spent_usd": round(spent, 9),
        "remaining_usd": round(budget.budget_usd - spent, 9),
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
