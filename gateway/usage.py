"""The usage log: one row per request, written by a batching background task.

The request path only calls ``UsageWriter.submit``: an append to a deque, no await, no lock,
no I/O. A single task owned by the writer takes the rows in batches and commits each batch
in one transaction through a sink (gateway/usage_sinks.py: one statement on aiosqlite's thread
for SQLite; COPY on its own thread for PostgreSQL), so a slow, locked, full or unreachable
database costs requests nothing: rows wait in memory (up to ``usage.max_pending``), the
outage shows in metrics and in one log line, and the writer retries with backoff until the
database takes them. ``stop()`` writes everything still pending before the gateway exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import aiosqlite
import msgspec

from gateway import db
from gateway.config.schema import Config, Price, Usage
from gateway.dialect import is_postgres, redacted
from gateway.metrics import Metrics
from gateway.migrations import migrate
from gateway.pricing import find_price, price_tokens
from gateway.usage_sinks import SqliteSink, UsageReader, UsageSink

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
    # Part of completion_tokens (OpenAI's convention); estimated from the thinking's length
    # where the upstream reports none.
    reasoning_tokens: int = 0
    # Token counts were guessed (gateway.tokens or a tokenizer), not reported by the upstream.
    estimated: bool = False
    ttft_ms: float | None = None
    overhead_ms: float = 0.0
    cost_usd: float | None = None
    # Fallbacks, swaps, disconnects: free text for humans reading the log.
    notes: str = ""


COLUMNS: tuple[str, ...] = UsageRecord.__struct_fields__
# Records turned into rows between two yields to the event loop.
_ROWS_PER_STEP = 250


class UsageWriter:
    """Owns the writer connection, the pending rows and the task that writes them."""

    def __init__(
        self,
        store: aiosqlite.Connection | UsageSink,
        settings: Usage,
        metrics: Metrics,
        prices: Mapping[str, Price] | None = None,
        *,
        path: str = db.MEMORY,
        stop_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        self.path = path
        # A bare connection (tests, embedding programs) is a SQLite one.
        self._sink: UsageSink = (
            SqliteSink(store, path, COLUMNS) if isinstance(store, aiosqlite.Connection) else store
        )
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
        if is_postgres(path):
            from gateway.usage_postgres import PostgresSink

            sink = await PostgresSink.open(path, COLUMNS)
            writer = cls(sink, config.usage, metrics, config.prices, path=path)
            writer.start()
            return writer
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
    async def reader(self) -> AsyncIterator[UsageReader]:
        """A connection for queries: its own, so a long read never holds up the writer."""
        async with self._sink.reader() as reader:
            yield reader

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
            await self._sink.close()

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
                refused = await self._sink.insert(rows, one_by_one)
            except Exception as exc:
                if isinstance(exc, self._sink.bad_rows) and not one_by_one:
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

    def _failed(self, exc: Exception) -> None:
        reason = self._sink.reason(exc)
        self._metrics.child(self._metrics.usage_write_errors, reason).inc()
        self._outage_attempts += 1
        if self._outage_since is None:
            # Once per outage: a locked database would otherwise log every backoff step.
            self._outage_since = time.monotonic()
            self._metrics.usage_healthy.set(0)
            log.warning(
                "usage log: cannot write to %s (%s: %s); holding rows in memory "
                "(up to usage.max_pending=%d) and retrying",
                redacted(self.path),
                reason,
                exc,
                self._max_pending,
            )

    def _recovered(self) -> None:
        if self._outage_since is None:
            return
        log.warning(
            "usage log: writing to %s again after %.1fs and %d failed attempts",
            redacted(self.path),
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
        log.error(
            "usage log: %d rows not written: %s still failing at shutdown",
            lost,
            redacted(self.path),
        )
        self._pending.clear()
        self._submitted_at.clear()
        self._in_flight = 0
