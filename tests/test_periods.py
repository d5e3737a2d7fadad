"""Budget periods and their spend: UTC boundaries, roll-over, and the count a restart reloads."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from gateway.budget import Budgets
from gateway.config.schema import Price
from gateway.keys import KeyCache, connect, create_key
from gateway.periods import PERIODS, Window, period_end, period_start
from gateway.project_budgets import set_budget
from gateway.usage import UsageRecord


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_each_period_starts_and_ends_at_its_utc_boundary() -> None:
    now = at("2026-12-09T15:30:00")  # a Wednesday
    assert period_start("daily", now) == at("2026-12-09T00:00:00")
    assert period_end("daily", now) == at("2026-12-10T00:00:00")
    assert period_start("weekly", now) == at("2026-12-07T00:00:00")
    assert period_end("weekly", now) == at("2026-12-14T00:00:00")
    assert period_start("monthly", now) == at("2026-12-01T00:00:00")
    assert period_end("monthly", now) == at("2027-01-01T00:00:00")
    assert (period_start(None, now), period_end(None, now)) == (0.0, math.inf)
    assert PERIODS == ("daily", "weekly", "monthly")


def test_a_month_end_is_the_first_of_the_next_month_whatever_its_length() -> None:
    assert period_end("monthly", at("2027-01-31T23:59:59")) == at("2027-02-01T00:00:00")
    assert period_end("monthly", at("2027-02-01T00:00:00")) == at("2027-03-01T00:00:00")
    assert period_end("daily", at("2026-12-31T23:59:59")) == at("2027-01-01T00:00:00")


def test_a_window_starts_again_from_zero_at_the_boundary() -> None:
    window = Window.opened("daily", at("2026-12-09T23:00:00"), usd=4.0)
    assert window.spent(at("2026-12-09T23:59:59")) == 4.0
    assert window.spent(at("2026-12-10T00:00:00")) == 0.0
    window.add(1.0, at("2026-12-10T08:00:00"))
    assert window.usd == 1.0 and window.end == at("2026-12-11T00:00:00")
    lifetime = Window.opened(None, 0.0, usd=4.0)
    lifetime.add(1.0, at("2099-01-01T00:00:00"))
    assert lifetime.spent(at("2099-01-01T00:00:00")) == 5.0


def _log(database: Path, ts: float, cost: float, key_id: str | None, project: str | None) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute(
            "INSERT INTO usage (ts, request_id, key_id, agent_id, project, ingress, model, status,"
            " duration_ms, cost_usd) VALUES (?, 'r', ?, 'a', ?, 'chat', 'm', 200, 1, ?)",
            (ts, key_id, project, cost),
        )


async def test_a_restart_counts_only_this_periods_spend_from_the_usage_log(tmp_path: Path) -> None:
    database = tmp_path / "t.db"
    connection = connect(str(database))
    _, daily = create_key(connection, "d", "a", budget_usd=1.0, budget_period="daily")
    _, lifetime = create_key(connection, "l", "a", budget_usd=1.0)
    set_budget(connection, "dao-1", 1.0, "daily")
    connection.close()
    now = datetime.now(UTC).timestamp()
    yesterday = period_start("daily", now) - 3600
    for key in (daily.id, lifetime.id):
        _log(database, yesterday, 0.75, key, "dao-1")
        _log(database, now, 0.5, key, "dao-1")

    keys = KeyCache(str(database))
    await keys.start()
    try:
        budgets = Budgets(keys, {"m": Price(input=1.0, output=1.0)})
        await budgets.load(str(database))
        assert budgets.left(daily.id) == 0.5
        assert budgets.left(lifetime.id) == -0.25
        assert budgets.refusal(daily.id, None) is None
        assert budgets.refusal(lifetime.id, None) == f"key {lifetime.id} has used up its budget"
        assert budgets.project_spent("dao-1") == 1.0
        assert (
            budgets.refusal(None, "dao-1") == "project 'dao-1' has used up its budget for this day"
        )
        assert budgets.refusal(None, "dao-2") is None
    finally:
        await keys.stop()


async def test_a_refresh_that_finds_nothing_new_keeps_the_spend_counted_in_memory(
    tmp_path: Path,
) -> None:
    database = tmp_path / "t.db"
    connection = connect(str(database))
    set_budget(connection, "dao-1", 1.0, "monthly")
    connection.close()
    keys = KeyCache(str(database))
    await keys.start()
    try:
        budgets = Budgets(keys, {"m": Price(input=100_000.0, output=0.0)})
        await budgets.load(str(database))
        now = datetime.now(UTC).timestamp()
        row = UsageRecord(
            ts=now, request_id="r", agent_id="a", ingress="chat", model="m", status=200,
            duration_ms=1.0, project="dao-1", prompt_tokens=5,
        )  # fmt: skip
        budgets.charge(row)
        assert row.cost_usd == 0.5 and budgets.project_spent("dao-1") == 0.5
        await keys.refresh()
        assert budgets.project_spent("dao-1") == 0.5, "the row is not in the log yet"
        connection = connect(str(database))
        set_budget(connection, "dao-1", 2.0, "monthly")
        connection.close()
        await keys.refresh()
        # A changed budget counts again from the log, which has not got the row.
        assert budgets.project_spent("dao-1") == 0.0
        assert keys.projects["dao-1"].budget_usd == 2.0
    finally:
        await keys.stop()
