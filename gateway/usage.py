"""The usage log: one row per request, written by a batching background task.

The request path only calls ``UsageWriter.submit``: an append to a deque, no await, no lock,
no I/O. A single task owned by the writer takes the rows in batches and commits each batch
with one ``executemany`` in one transaction on aiosqlite's thread, so a slow, locked or full
database costs requests nothing: rows wait in memory (up to ``usage.max_pending``), the
outage shows in metrics and in one log line, and the writer retries with backoff until the
database takes them. ``stop()`` writes everything still pending before the gateway exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import aiosqlite
import msgspec

from gateway import db
from gateway.config.schema import Config, Price, Usage
from gateway.metrics import Metrics
from gateway.migrations import migrate
from gateway.pricing import find_price, price_tokens

log = logging.getLogger("turnout.usage")

Ingress = Literal[
    "chat", "completions", "embeddings", "messages", "responses", "llm_proxy", "websocket"
]

# Past start-up, a lock is an outage the retry loop rides out and reports; a short busy
# timeout keeps each attempt, and so a shutdown during an outage, short.
WRITE_BUSY_TIMEOUT = 1.0


class UsageRecord(msgspec.Struct, kw_only=True, gc=False):
    """One request, as the usage table stores it. Field names are the column names.

    ``prompt_tokens`` includes ``cached_tokens`` (OpenAI's convention; adapters for APIs that
    count cache hits apart, like Anthropic's, add them in). Leave ``cost_usd`` None to have the
    writer price the row from ``prices:`` off the request path.
    """

    ts: float  # unix seconds when the request arrived
    request_id: str
    agent_id: str
    ingress: Ingress
    model: str  # the logical model the client asked for
    status: int  # HTTP status sent (or about to be sent) to the client
    duration_ms: float
    key_id: str | None = None
    project: str | None = None
    channel: str | None = None
    role: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # Token counts were guessed (gateway.tokens or a tokenizer), not reported by the upstream.
    estimated: bool = False
    ttft_ms: float | None = None
    overhead_ms: float = 0.0
    cost_usd: float | None = None
    # Fallbacks, swaps, disconnects: free text for humans reading the log.
    notes: str = ""


COLUMNS: tuple[str, ...] = UsageRecord.__struct_fields__
_INSERT = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
# A whole batch as one JSON array bound to one parameter: a single SQLite statement step,
# during which sqlite3 releases the GIL. executemany instead steps once per row, taking the
# GIL back each time; against a busy event loop that made the writer fall behind the load.
# Multi-row INSERT ... VALUES statements are one step too and cost SQLite far less (58k
# instructions a row against 151k, counted with callgrind), but sqlite3 binds their 22
# parameters a row with the GIL held (~15k instructions, more for None and bool values),
# time taken from the event loop, which is what limits a gateway; the JSON is parsed on the
# writer's thread, on a core the event loop does not use.
_INSERT_BATCH = (
    f"INSERT INTO usage ({', '.join(COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(COLUMNS)))
    + " FROM json_each(?)"
)
_encode_rows = msgspec.json.Encoder().encode

# Records turned into rows between two yields to the event loop.
_ROWS_PER_STEP = 250

# The database refused these rows themselves; retrying cannot help, so they are written one
# by one and the refused ones are counted and dropped.
_BAD_ROWS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
)


def error_reason(exc: BaseException) -> str:
    """A short label for why a write failed: locked, full, readonly, io or other."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "locked"
    if name.startswith("SQLITE_FULL"):
        return "full"
    if name.startswith("SQLITE_READONLY"):
        return "readonly"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")):
        return "io"
    return "other"


class UsageWriter:
    """Owns the writer connection, the pending rows and the task that writes them."""

    def __init__(
        self,
        connection: aiosqlite.Connection,
        settings: Usage,
        metrics: Metrics,
        prices: Mapping[str, Price] | None = None,
        *,
        path: str = db.MEMORY,
        stop_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self.path = path
        self._db = connection
        self._batch_size = max(1, settings.batch_size)
        self._interval = settings.flush_interval_seconds
        self._max_pending = max(1, settings.max_pending)
        self._prices = prices or {}
        self._price_memo: dict[tuple[str, str | None], Price | None] = {}
        self._stop_timeout = stop_timeout
        self._backoff = backoff
        # Two deques in lockstep (same maxlen, appended together): the rows and when each was
        # submitted, for the lag gauge. At maxlen an append drops the oldest of both.
        self._pending: deque[UsageRecord] = deque(maxlen=self._max_pending)
        self._submitted_at: deque[float] = deque(maxlen=self._max_pending)
        # The batch the task is writing (or retrying) now: still pending for depth and lag.
        self._in_flight = 0
        self._in_flight_since = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._deadline = 0.0
        self._outage_since: float | None = None
        self._outage_attempts = 0
        self._overflowing = False
        self._metrics = metrics
        self._written = metrics.usage_written
        self._dropped_overflow = metrics.child(metrics.usage_dropped, "overflow")
        self._dropped_closed = metrics.child(metrics.usage_dropped, "closed")
        metrics.usage_queue_depth.set_function(self.depth)
        metrics.usage_lag.set_function(self.lag)
        metrics.usage_healthy.set(1)

    @classmethod
    async def open(cls, config: Config, metrics: Metrics) -> UsageWriter:
        """Open ``server.database``, bring its schema up to date and start writing."""
        path = config.server.database
        connection = await db.connect(path)
        try:
            await migrate(connection)
            await db.set_busy_timeout(connection, WRITE_BUSY_TIMEOUT)
        except BaseException:
            await connection.close()
            raise
        writer = cls(connection, config.usage, metrics, config.prices, path=path)
        writer.start()
        return writer

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-writer")

    # --- the request path ------------------------------------------------------------------------

    def submit(self, record: UsageRecord) -> None:
        """Queue one row. O(1), never awaits, never raises: it runs on the request path."""
        if self._closed:
            self._dropped_closed.inc()
            log.error("usage log: row for request %s arrived after shutdown", record.request_id)
            return
        if len(self._pending) == self._max_pending:
            self._overflow()
        self._pending.append(record)
        self._submitted_at.append(time.monotonic())
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    def _overflow(self) -> None:
        self._dropped_overflow.inc()
        if not self._overflowing:
            self._overflowing = True
            log.error(
                "usage log: %d rows waiting, over usage.max_pending; dropping the oldest "
                "(counted in turnout_usage_rows_dropped_total)",
                self._max_pending,
            )

    # --- observation -----------------------------------------------------------------------------

    def depth(self) -> int:
        """Rows submitted and not yet committed."""
        return len(self._pending) + self._in_flight

    def lag(self) -> float:
        """Seconds since the oldest row not yet committed was submitted."""
        if self._in_flight:
            oldest = self._in_flight_since
        elif self._submitted_at:
            oldest = self._submitted_at[0]
        else:
            return 0.0
        return max(0.0, time.monotonic() - oldest)

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        """A connection for queries: its own, so a long read never holds up the writer."""
        if self.path == db.MEMORY:
            # A private in-memory database exists only on the writer's connection.
            yield self._db
            return
        connection = await db.connect(self.path, read_only=True)
        try:
            yield connection
        finally:
            await connection.close()

    # --- shutdown --------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Write every row submitted so far, then close the database. Safe to call twice.

        Rows submitted while this runs are written too. If the database is still failing
        after ``stop_timeout`` seconds, what is left is counted as dropped and logged.
        """
        if self._closed:
            return
        self._closing = True
        self._deadline = time.monotonic() + self._stop_timeout
        self._wake.set()
        try:
            if self._task is None:
                await self._run()
            else:
                await self._task
        except Exception:
            log.exception("usage writer failed")
        finally:
            self._closed = True
            self._give_up("shutdown")
            await self._db.close()

    # --- the writer task: the only code that takes rows out of the deques ------------------------

    async def _run(self) -> None:
        # Full batches go as soon as they fill; a partial one waits for the next tick of the
        # flush interval, so a steady trickle of requests costs one transaction per interval.
        next_flush = time.monotonic() + self._interval
        while self._pending or not self._closing:
            if not self._closing and len(self._pending) < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next_flush - time.monotonic()):
                        await self._wake.wait()
            self._wake.clear()
            due = self._closing or time.monotonic() >= next_flush
            while len(self._pending) >= self._batch_size or (due and self._pending):
                if not await self._write(self._take()):
                    self._give_up("shutdown")
                    return
            if due:
                next_flush = time.monotonic() + self._interval

    def _take(self) -> list[UsageRecord]:
        count = min(len(self._pending), self._batch_size)
        self._in_flight_since = self._submitted_at[0]
        self._in_flight = count
        pending, submitted_at = self._pending.popleft, self._submitted_at.popleft
        batch = [pending() for _ in range(count)]
        for _ in range(count):
            submitted_at()
        if self._overflowing and len(self._pending) < self._max_pending // 2:
            self._overflowing = False
        return batch

    async def _write(self, batch: list[UsageRecord]) -> bool:
        """Commit one batch, retrying through outages. False: shutdown's deadline passed first."""
        rows = await self._rows(batch)
        delay, max_delay = self._backoff
        one_by_one = False
        while True:
            try:
                refused = await self._insert(rows, one_by_one)
            except Exception as exc:
                if isinstance(exc, _BAD_ROWS) and not one_by_one:
                    one_by_one = True
                    continue
                self._failed(exc)
                if self._closing and time.monotonic() + delay > self._deadline:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            self._in_flight = 0
            self._recovered()
            self._written.inc(len(rows) - refused)
            if refused:
                self._metrics.child(self._metrics.usage_dropped, "invalid").inc(refused)
            return True

    async def _rows(self, batch: list[UsageRecord]) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = []
        for i, record in enumerate(batch):
            if i and not i % _ROWS_PER_STEP:
                # About 1 µs a row: yield now and then so a full batch never holds requests
                # up for milliseconds.
                await asyncio.sleep(0)
            if record.cost_usd is None:
                try:
                    # Set on the record itself: the dashboard's live table shows the same row.
                    record.cost_usd = self._cost(record)
                except Exception:
                    # A malformed record (say, a non-string model) still gets its row.
                    log.exception("usage log: cannot price request %s", record.request_id)
            rows.append(msgspec.structs.astuple(record))
        return rows

    def _cost(self, record: UsageRecord) -> float | None:
        key = (record.model, record.upstream_model)
        if key not in self._price_memo:
            if len(self._price_memo) >= 4096:  # clients choose model names; keep this bounded
                self._price_memo.clear()
            self._price_memo[key] = find_price(self._prices, *key)
        price = self._price_memo[key]
        if price is None:
            return None
        return price_tokens(
            price, record.prompt_tokens, record.completion_tokens, record.cached_tokens
        )

    async def _insert(self, rows: list[Sequence[Any]], one_by_one: bool) -> int:
        """One transaction; returns how many rows the database refused (one_by_one only)."""
        connection = self._db
        refused = 0
        # IMMEDIATE takes the write lock before any work, so a locked database fails here,
        # cheaply, rather than after the inserts.
        await connection.execute("BEGIN IMMEDIATE")
        try:
            if not one_by_one:
                await connection.execute(_INSERT_BATCH, (_encode_rows(rows).decode(),))
            else:
                for row in rows:
                    try:
                        await connection.execute(_INSERT, row)
                    except _BAD_ROWS as exc:
                        refused += 1
                        log.error("usage log: the database refused a row (%s): %r", exc, row)
            await connection.execute("COMMIT")
        except BaseException:
            # A full disk may already have rolled the transaction back.
            if connection.in_transaction:
                with contextlib.suppress(Exception):
                    await connection.execute("ROLLBACK")
            raise
        return refused

    def _failed(self, exc: Exception) -> None:
        reason = error_reason(exc)
        self._metrics.child(self._metrics.usage_write_errors, reason).inc()
        self._outage_attempts += 1
        if self._outage_since is None:
            # Once per outage: a locked database would otherwise log every backoff step.
            self._outage_since = time.monotonic()
            self._metrics.usage_healthy.set(0)
            log.warning(
                "usage log: cannot write to %s (%s: %s); holding rows in memory "
                "(up to usage.max_pending=%d) and retrying",
                self.path,
                reason,
                exc,
                self._max_pending,
            )

    def _recovered(self) -> None:
        if self._outage_since is None:
            return
        log.warning(
            "usage log: writing to %s again after %.1fs and %d failed attempts",
            self.path,
            time.monotonic() - self._outage_since,
            self._outage_attempts,
        )
        self._outage_since = None
        self._outage_attempts = 0
        self._metrics.usage_healthy.set(1)

    def _give_up(self, reason: str) -> None:
        lost = len(self._pending) + self._in_flight
        if not lost:
            return
        self._metrics.child(self._metrics.usage_dropped, reason).inc(lost)
        log.error("usage log: %d rows not written: %s still failing at shutdown", lost, self.path)
        self._pending.clear()
        self._submitted_at.clear()
        self._in_flight = 0
