"""``GET /v1/usage``: the usage log, filtered, optionally grouped, as JSON or CSV.

    curl 'localhost:8080/v1/usage?agent=coder&since=24h&group_by=model,day'
    curl 'localhost:8080/v1/usage?since=2025-06-01&format=csv' > usage.csv

Without ``group_by``, ``data`` holds the newest rows; with it, one summary per group. ``totals``
always summarises every selected row (``limit`` bounds ``data`` only). Latency percentiles are
nearest-rank over the selected rows, computed by SQLite window functions, so no row leaves the
database to be summarised.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery

from gateway.dialect import SQLITE, Dialect
from gateway.errors import BadRequest, NotFound
from gateway.guards import administrator
from gateway.usage import UsageWriter
from gateway.usage_sinks import UsageReader

# The largest ``limit``: SQLite's largest integer (and far beyond any real log).
MAX_ROWS = 2**63 - 1

# group_by name → SQL expression over the usage table. Days and hours are UTC.
GROUPS: dict[str, str] = {
    "agent": "agent_id",
    "model": "model",
    "key": "key_id",
    "project": "project",
    "channel": "channel",
    "provider": "provider",
    "day": "strftime('%Y-%m-%d', ts, 'unixepoch')",
    "hour": "strftime('%Y-%m-%dT%H:00Z', ts, 'unixepoch')",
}

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Nearest-rank percentile p of n values is the value at rank ceil(p * n / 100); in integers
# that is (n * p + 99) / 100.
_SUMMARY = """
WITH selected AS (
    SELECT {groups}, status, prompt_tokens, completion_tokens, cached_tokens, estimated,
           cost_usd, duration_ms, ttft_ms
    FROM usage {where}
), ranked AS (
    SELECT *,
        ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY duration_ms) AS d_rank,
        COUNT(*) OVER (PARTITION BY {partition}) AS d_n,
        ROW_NUMBER() OVER (PARTITION BY {partition}, ttft_ms IS NULL ORDER BY ttft_ms) AS t_rank,
        COUNT(ttft_ms) OVER (PARTITION BY {partition}) AS t_n
    FROM selected
)
SELECT {names}
    COUNT(*) AS requests,
    COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS errors,
    COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
    COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
    COALESCE(SUM(cached_tokens), 0) AS cached_tokens,
    COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS total_tokens,
    COALESCE(SUM(estimated), 0) AS estimated_requests,
    SUM(cost_usd) AS cost_usd,
    MAX(CASE WHEN d_rank = (d_n * 50 + 99) / 100 THEN duration_ms END) AS latency_ms_p50,
    MAX(CASE WHEN d_rank = (d_n * 95 + 99) / 100 THEN duration_ms END) AS latency_ms_p95,
    MAX(CASE WHEN ttft_ms IS NOT NULL AND t_rank = (t_n * 50 + 99) / 100 THEN ttft_ms END)
        AS ttft_ms_p50,
    MAX(CASE WHEN ttft_ms IS NOT NULL AND t_rank = (t_n * 95 + 99) / 100 THEN ttft_ms END)
        AS ttft_ms_p95
FROM ranked {group_clause}
"""


@dataclass(frozen=True, slots=True)
class UsageQuery:
    agent: str | None = None
    model: str | None = None
    key: str | None = None
    project: str | None = None
    since: float | None = None
    until: float | None = None
    group_by: tuple[str, ...] = ()
    # 0: no limit.
    limit: int = 1000


def parse_time(text: str, now: float, param: str) -> float:
    """Unix seconds, ISO 8601 (UTC unless it names an offset), or an age such as ``90m``, ``24h``, ``7d``."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return _in_range(now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)], param)
    try:
        return _in_range(float(text), param)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise BadRequest(
            f"{param}: expected unix seconds, ISO 8601 or an age like 24h, got {text[:100]!r}",
            param=param,
        ) from None


def _in_range(seconds: float, param: str) -> float:
    """A finite time within ±``_MAX_SECONDS``: nan and inf once reached SQLite and int() (500s)."""
    if not -_MAX_SECONDS <= seconds <= _MAX_SECONDS:  # also false for nan
        raise BadRequest(
            f"{param}: expected a time within ±{_MAX_SECONDS:.0f} unix seconds", param=param
        )
    return seconds


# Year 5138; ages and timestamps beyond it are typos or probes.
_MAX_SECONDS = 1e11


def parse_group_by(values: Iterable[str]) -> tuple[str, ...]:
    """``group_by=agent,model`` and ``group_by=agent&group_by=model`` alike, in order, once each."""
    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name or name in names:
                continue
            if name not in GROUPS:
                raise BadRequest(
                    f"group_by: unknown {name!r}; expected some of {', '.join(GROUPS)}",
                    param="group_by",
                )
            names.append(name)
    return tuple(names)


def where_clause(query: UsageQuery) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("agent_id", query.agent),
        ("model", query.model),
        ("key_id", query.key),
        ("project", query.project),
    ):
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        conditions.append("ts >= ?")
        params.append(query.since)
    if query.until is not None:
        conditions.append("ts < ?")
        params.append(query.until)
    return ("WHERE " + " AND ".join(conditions) if conditions else ""), params


def summary_sql(
    query: UsageQuery, grouped: bool, dialect: Dialect = SQLITE
) -> tuple[str, list[Any]]:
    """Totals (grouped=False) or one summary per group, with their parameters."""
    where, params = where_clause(query)
    names = [f"g{i}" for i in range(len(query.group_by))] if grouped else []
    groups = [
        f"{dialect.groups.get(name, GROUPS[name])} AS g{i}" for i, name in enumerate(query.group_by)
    ]
    groups = groups if grouped else []
    # Without groups every row is one partition: a constant stands in for the columns.
    partition = ", ".join(names) or "NULL"
    group_clause = ""
    if names:
        # NULLS FIRST is SQLite's default and not PostgreSQL's: said, both order alike.
        order = ", ".join(f"{name} NULLS FIRST" for name in names)
        group_clause = f"GROUP BY {', '.join(names)} ORDER BY {order}"
        if query.limit:
            group_clause += " LIMIT ?"
            params = [*params, query.limit]
    sql = _SUMMARY.format(
        groups=", ".join(groups) or "NULL AS g",
        where=where,
        partition=partition,
        names="".join(f"{name}, " for name in names),
        group_clause=group_clause,
    )
    return sql, params


def rows_sql(query: UsageQuery, dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
    where, params = where_clause(query)
    sql = f"SELECT * FROM usage {where} ORDER BY ts DESC, id DESC LIMIT ?"
    return sql, [*params, query.limit or dialect.no_limit]


async def fetch(connection: UsageReader, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    return await connection.fetch(sql, params)


async def usage_report(connection: UsageReader, query: UsageQuery) -> dict[str, Any]:
    """``{"data": [...], "totals": {...}}`` for one query."""
    dialect = connection.dialect
    totals = (await fetch(connection, *summary_sql(query, False, dialect)))[0]
    if query.group_by:
        data = await fetch(connection, *summary_sql(query, True, dialect))
        for group in data:
            for i, name in enumerate(query.group_by):
                group[name] = group.pop(f"g{i}")
        data = [_groups_first(group, query.group_by) for group in data]
    else:
        data = [_row(row) for row in await fetch(connection, *rows_sql(query, dialect))]
    return {"data": data, "totals": _rounded(totals)}


def to_csv(data: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if data:
        # RFC 4180's CRLF: the writer then quotes a cell holding either \r or \n (with "\n"
        # alone, an id holding \r went out unquoted and split its row in two).
        writer = csv.DictWriter(out, fieldnames=list(data[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows({k: inert_cell(v) for k, v in row.items()} for row in data)
    return out.getvalue()


def inert_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading ``'`` (OWASP's advice).

    Agent ids, projects and models are chosen by callers: ``=HYPERLINK(...)`` in an agent id
    became a live link in whoever opened the export. Numbers stay numbers (a negative cost is
    no formula); only strings starting with ``= + - @``, tab or carriage return change.
    """
    # A lone "-" (the log's "no model") cannot be a formula.
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS) and value != "-":
        return "'" + value
    return value


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _groups_first(group: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return _rounded({**{name: group[name] for name in names}, **group})


def _rounded(summary: dict[str, Any]) -> dict[str, Any]:
    if summary.get("cost_usd") is not None:
        summary["cost_usd"] = round(summary["cost_usd"], 9)
    return summary


def _row(row: dict[str, Any]) -> dict[str, Any]:
    row["stream"] = bool(row["stream"])
    row["estimated"] = bool(row["estimated"])
    return row


class UsageController(Controller):
    path = "/v1/usage"
    guards = (administrator,)

    @get("/")
    async def usage(
        self,
        usage: NamedDependency[UsageWriter | None],
        agent: FromQuery[str | None] = None,
        model: FromQuery[str | None] = None,
        key: FromQuery[str | None] = None,
        project: FromQuery[str | None] = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
        group_by: FromQuery[list[str] | None] = None,
        limit: FromQuery[int] = 1000,
        format: FromQuery[str] = "json",
    ) -> Response[Any]:
        if usage is None:
            raise NotFound("the usage log is off (usage.enabled: false in routing.yaml)")
        if format not in ("json", "csv"):
            raise BadRequest("format: expected json or csv", param="format")
        if not 0 <= limit <= MAX_ROWS:  # SQLite integers are 64-bit: 1e23 raised OverflowError
            raise BadRequest(f"limit: expected 0 (no limit) to {MAX_ROWS}", param="limit")
        now = time.time()
        query = UsageQuery(
            agent=agent,
            model=model,
            key=key,
            project=project,
            since=None if since is None else parse_time(since, now, "since"),
            until=None if until is None else parse_time(until, now, "until"),
            group_by=parse_group_by(group_by or ()),
            limit=limit,
        )
        async with usage.reader() as connection:
            report = await usage_report(connection, query)
        if format == "csv":
            return Response(
                to_csv(report["data"]),
                # Litestar adds "; charset=utf-8" (said here too, the header had it twice).
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
            )
        return Response(report)
