"""``/v1/requests/*``: what the gateway is doing right now, for the dashboard (admin only).

    curl 'localhost:8080/v1/requests/recent?after=120'        # rows after cursor 120
    curl 'localhost:8080/v1/requests/series?since=1h&by=agent' # per-minute buckets per agent

``recent`` reads the in-memory ring of the newest usage rows (``gateway/recent.py``), so a
poll costs no database read; ``cursor`` is the number of rows ever recorded, and passing it back
as ``after`` returns only rows recorded since. ``rejections`` counts rate-limit refusals since
start by the scope and limit that refused (the ``turnout_ratelimit_rejections_total`` metric).

``series`` buckets the usage log over time: requests, errors, turnout's own 429s, tokens (prompt,
completion and the cached part of the prompt) and latency percentiles (nearest rank, over answered
requests only, so instant refusals do not drag the percentiles down) per bucket and per group,
and ``totals`` the same over the whole range.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from prometheus_client import Gauge

from gateway.api.usage import GROUPS, UsageQuery, fetch, parse_time, where_clause
from gateway.dialect import SQLITE, Dialect
from gateway.errors import BadRequest, NotFound
from gateway.guards import administrator
from gateway.metrics import Metrics
from gateway.recent import RecentRequests
from gateway.usage import UsageWriter

# Buckets per series when the caller does not choose a width: fine enough to see a burst.
_TARGET_BUCKETS = 60
# Widths a chosen or computed bucket snaps up to, so bucket edges are round times.
_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
_DAY = 86400
# The widest bucket asked for: a year.
_MAX_BUCKET = 366 * 86400.0
# A bucket wider than any range: the whole selection in one, for the totals.
_WHOLE = 10**12
_NO_TOTALS = {
    "requests": 0,
    "errors": 0,
    "rate_limited": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "cached_tokens": 0,
    "latency_ms_p50": None,
    "latency_ms_p95": None,
    "latency_ms_p99": None,
    "ttft_ms_p50": None,
    "ttft_ms_p95": None,
}
_MAX_BUCKETS = 2000

_SERIES = """
WITH selected AS (
    SELECT {bucket} AS t, {key} AS k, status, prompt_tokens, completion_tokens, cached_tokens,
           duration_ms, ttft_ms, CASE WHEN status < 400 THEN 1 ELSE 0 END AS ok, provider
    FROM usage {where}
), ranked AS (
    SELECT *,
        ROW_NUMBER() OVER (PARTITION BY t, k, ok ORDER BY duration_ms) AS d_rank,
        SUM(ok) OVER (PARTITION BY t, k) AS d_n,
        ROW_NUMBER() OVER (PARTITION BY t, k, ok = 1 AND ttft_ms IS NOT NULL ORDER BY ttft_ms)
            AS t_rank,
        SUM(CASE WHEN ok = 1 AND ttft_ms IS NOT NULL THEN 1 ELSE 0 END) OVER (PARTITION BY t, k)
            AS t_n
    FROM selected
)
SELECT t, k AS key,
    COUNT(*) AS requests,
    SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors,
    -- turnout's own refusals only: an upstream's 429 passed through names its provider.
    SUM(CASE WHEN status = 429 AND provider IS NULL THEN 1 ELSE 0 END) AS rate_limited,
    SUM(prompt_tokens) AS prompt_tokens,
    SUM(completion_tokens) AS completion_tokens,
    SUM(cached_tokens) AS cached_tokens,
    MAX(CASE WHEN ok = 1 AND d_rank = (d_n * 50 + 99) / 100 THEN duration_ms END) AS latency_ms_p50,
    MAX(CASE WHEN ok = 1 AND d_rank = (d_n * 95 + 99) / 100 THEN duration_ms END) AS latency_ms_p95,
    MAX(CASE WHEN ok = 1 AND d_rank = (d_n * 99 + 99) / 100 THEN duration_ms END) AS latency_ms_p99,
    MAX(CASE WHEN ok = 1 AND ttft_ms IS NOT NULL AND t_rank = (t_n * 50 + 99) / 100 THEN ttft_ms END)
        AS ttft_ms_p50,
    MAX(CASE WHEN ok = 1 AND ttft_ms IS NOT NULL AND t_rank = (t_n * 95 + 99) / 100 THEN ttft_ms END)
        AS ttft_ms_p95
FROM ranked GROUP BY t, k ORDER BY t, k
"""


def bucket_width(span: float, chosen: float | None) -> int:
    """Seconds per bucket: ``chosen`` or about 60 buckets over ``span``, snapped to a round width."""
    wanted = chosen if chosen is not None else span / _TARGET_BUCKETS
    for width in _WIDTHS:
        if width >= wanted:
            return width
    return _DAY * max(1, -(-int(wanted) // _DAY))


def series_sql(
    query: UsageQuery, by: str | None, width: int, dialect: Dialect = SQLITE
) -> tuple[str, list[Any]]:
    where, params = where_clause(query)
    key = "'all'" if by is None else f"COALESCE({GROUPS[by]}, '-')"
    # The bucket width comes first: its two placeholders precede the WHERE clause's.
    sql = _SERIES.format(bucket=dialect.bucket, key=key, where=where)
    return sql, [width, width, *params]


def _value(gauge: Gauge) -> float:
    return next(s.value for m in gauge.collect() for s in m.samples)


def rejections(metrics: Metrics) -> list[dict[str, Any]]:
    """Rate-limit refusals since start, by scope and limit, most first."""
    counts = [
        {"scope": s.labels["scope"], "limit": s.labels["limit"], "count": int(s.value)}
        for metric in metrics.ratelimit_rejections.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    ]
    return sorted(counts, key=lambda c: -c["count"])


class RequestsController(Controller):
    path = "/v1/requests"
    guards = (administrator,)

    @get("/recent")
    async def recent(
        self,
        recent: NamedDependency[RecentRequests],
        usage: NamedDependency[UsageWriter | None],
        metrics: NamedDependency[Metrics],
        after: FromQuery[int] = 0,
        limit: FromQuery[int] = 100,
    ) -> dict[str, Any]:
        if limit < 1:
            raise BadRequest("limit: expected 1 or more", param="limit")
        ring = recent.rows
        total = recent.count
        # Row i of the ring (oldest first) was the (total - len + i)-th ever recorded.
        first = total - len(ring)
        start = max(after, first, total - limit)
        rows = [
            {"seq": first + i + 1, **msgspec.structs.asdict(ring[i])}
            for i in range(len(ring) - 1, start - first - 1, -1)
        ]
        return {
            "data": rows,
            "cursor": total,
            "usage_log": usage is not None,
            "in_flight": int(_value(metrics.inflight)),
            "rejections": rejections(metrics),
        }

    @get("/series")
    async def series(
        self,
        usage: NamedDependency[UsageWriter | None],
        since: FromQuery[str] = "1h",
        until: FromQuery[str | None] = None,
        bucket: FromQuery[float | None] = None,
        by: FromQuery[str] = "model",
        agent: FromQuery[str | None] = None,
        model: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        if usage is None:
            raise NotFound("the usage log is off (usage.enabled: false in routing.yaml)")
        if by != "none" and (by not in GROUPS or by in ("day", "hour")):
            names = ", ".join(g for g in GROUPS if g not in ("day", "hour"))
            raise BadRequest(f"by: expected none or one of {names}", param="by")
        # Written so that nan fails too (it once reached int(): a 500).
        if bucket is not None and not 0 < bucket <= _MAX_BUCKET:
            raise BadRequest(
                f"bucket: expected seconds above 0, up to {_MAX_BUCKET:.0f}", param="bucket"
            )
        now = time.time()
        start = parse_time(since, now, "since")
        end = now if until is None else parse_time(until, now, "until")
        if end <= start:
            raise BadRequest("until must be after since", param="until")
        width = bucket_width(end - start, bucket)
        if (end - start) / width > _MAX_BUCKETS:
            raise BadRequest(
                f"more than {_MAX_BUCKETS} buckets; choose a wider bucket", param="bucket"
            )
        query = UsageQuery(agent=agent, model=model, since=start, until=end)
        async with usage.reader() as connection:
            dialect = connection.dialect
            sql, params = series_sql(query, None if by == "none" else by, width, dialect)
            points = await fetch(connection, sql, params)
            whole = await fetch(connection, *series_sql(query, None, _WHOLE, dialect))
        totals = {k: v for k, v in whole[0].items() if k not in ("t", "key")} if whole else {}
        return {
            "since": start,
            "until": end,
            "bucket_seconds": width,
            "by": by,
            "keys": sorted({p["key"] for p in points}),
            "data": points,
            "totals": totals or dict(_NO_TOTALS),
        }
