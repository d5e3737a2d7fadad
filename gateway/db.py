"""The SQLite database: the usage log and virtual keys. One file, WAL mode.

(``server.database: postgresql://...`` stores them in PostgreSQL instead: ``prepare`` and the
checks here hand such a URL to gateway/postgres.py.)

WAL lets readers (``GET /v1/usage``, ``sqlite3`` in a terminal) run while the usage writer
commits, and ``synchronous=NORMAL`` makes a commit an append to the WAL with no fsync: a
power cut may lose the last few batches, never corrupt the file. That is the right trade for
a usage log that commits a batch every half second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from pathlib import Path

import aiosqlite

from gateway.dialect import driver_problem, is_postgres

MEMORY = ":memory:"


async def connect(
    path: str, *, busy_timeout: float = 5.0, read_only: bool = False
) -> aiosqlite.Connection:
    """Open ``path`` (relative to the working directory; ``:memory:`` for a private database).

    Transactions are explicit (``isolation_level=None``): the writer says ``BEGIN IMMEDIATE``
    itself, so a batch takes the write lock up front instead of upgrading half-way and failing.
    """
    if path != MEMORY and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = await aiosqlite.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        if read_only:
            # A reader never takes the write lock, so it cannot hold up the writer.
            await connection.execute("PRAGMA query_only = ON")
        else:
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA synchronous = NORMAL")
            await connection.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await connection.close()
        raise
    return connection


def creation_problem(key: str, path: str) -> str:
    """Why the file or directory at ``path`` (routing.yaml's ``key``) could not be created or
    written, or "": the start-up checks' look at it, which writes nothing. For a PostgreSQL
    URL: whether its driver (the ``turnout[postgres]`` extra) is installed.

    The gateway creates the missing directories (``connect`` here, the engines' log files):
    the nearest one that exists must let it.
    """
    if is_postgres(path):
        return driver_problem(key, path)
    if path == MEMORY or path.startswith("file:"):
        return ""
    target = Path(path)
    if target.exists():
        return "" if os.access(target, os.R_OK | os.W_OK) else f"{key}: {path} is not writable"
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{key}: cannot create {path}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{key}: cannot create {path}: directory {parent} is not writable"
    return ""


async def set_busy_timeout(connection: aiosqlite.Connection, seconds: float) -> None:
    await connection.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")


async def prepare(path: str) -> None:
    """Create the database if needed and bring its schema up to date."""
    from gateway.migrations import MIGRATIONS, migrate

    if is_postgres(path):
        from gateway import postgres

        await postgres.prepare(path, MIGRATIONS)
        return
    connection = await connect(path)
    try:
        await migrate(connection)
    finally:
        await connection.close()


def prepare_sync(path: str) -> None:
    """``prepare`` for command-line tools, which run before (or without) an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(prepare(path))
        return
    # Called from inside a running loop (an embedding program, a test): a private loop in a
    # worker thread, since this caller cannot await.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, prepare(path)).result()
