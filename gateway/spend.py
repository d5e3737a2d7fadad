"""What keys and projects have spent, read from the usage log (off the request path).

Each budget counts from the start of its own period (gateway/periods.py), so the sums are
grouped by start: one query per distinct start, whatever the number of keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Literal

from gateway.dbapi import Connection

Column = Literal["key_id", "project"]
# Well under SQLite's limit on bound parameters in one statement.
_CHUNK = 500


def spent_since(
    connection: Connection, column: Column, starts: Mapping[str, float]
) -> dict[str, float]:
    """USD logged for each value of ``column`` (a key id, a project) since its own start.

    An unprepared database (no usage table yet) has spent nothing.
    """
    by_start: dict[float, list[str]] = {}
    for name, start in starts.items():
        by_start.setdefault(start, []).append(name)
    spent: dict[str, float] = {}
    try:
        for start, names in by_start.items():
            for i in range(0, len(names), _CHUNK):
                chunk = names[i : i + _CHUNK]
                marks = ", ".join("?" for _ in chunk)
                rows = connection.execute(
                    f"SELECT {column}, SUM(cost_usd) FROM usage WHERE ts >= ?"
                    f" AND cost_usd IS NOT NULL AND {column} IN ({marks}) GROUP BY {column}",
                    (start, *chunk),
                ).fetchall()
                spent.update((str(name), float(usd)) for name, usd in rows)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
    return spent
