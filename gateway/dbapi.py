"""The part of a DB-API connection the key store, budgets and the admin API use: the same
calls on ``sqlite3`` and on PostgreSQL (gateway/postgres.py), so they are written once.

SQL goes in with ``?`` placeholders and SQLite's spelling; the PostgreSQL connection turns it
into its own (gateway/dialect.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...
