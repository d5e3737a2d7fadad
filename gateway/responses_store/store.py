"""Stored responses: recent ones in memory, all of them in a database, written off the request path.

The request path only ever touches memory: ``put`` is a dict store and a deque append, and a
continuation finds the turns before it in the cache (``conversation``). The database (a
``Backend``: SQLite on this machine, or PostgreSQL shared by replicas) is written by one task
in batches, and read only on a cache miss (a conversation older than the cache holds, one from
before a restart, or one another replica stored). SQLite is read inline (tens of
microseconds); PostgreSQL off the loop: a miss raises ``Unfetched``, whose ``fetch`` the
async caller awaits before it tries again (``settled``).

Writes wait in memory while the database is down, up to ``responses.max_pending_bytes``;
past that the oldest are dropped, counted (``lost``, ``turnout_stored_responses_dropped_total``)
and logged. A miss while it is down is a 503 (``StoreUnavailable``); what the cache holds is
still answered.

With ``server.database: ":memory:"`` there is no database to keep them in: the cache is the
store, bounded by ``responses.cache_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from gateway import db
from gateway.config.responses import Responses
from gateway.dialect import is_postgres, redacted
from gateway.errors import NotFound, StoreUnavailable, Unfetched
from gateway.responses_store.backend import Backend
from gateway.responses_store.records import Owner, StoredResponse
from gateway.translate.responses import Item

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger("turnout.responses")
T = TypeVar("T")

# How often the writer deletes what retention and the size cap no longer keep.
PRUNE_SECONDS = 60.0
FLUSH_SECONDS = 0.1
# A cache miss waits this long for the shared database before it answers 503.
FETCH_SECONDS = 5.0
# A response not found is looked for once more after this: another replica's write may land.
LANDING_SECONDS = 5 * FLUSH_SECONDS
# Ids a fetch found missing, remembered for the retry that follows it (not longer: another
# replica's write may land a moment later).
_ABSENT_MAX = 1024


def backend_for(database: str) -> Backend | None:
    """``server.database``'s backend; None for ``:memory:`` (the cache is the store)."""
    if database == db.MEMORY:
        return None
    opener: Callable[[str], Backend]
    if is_postgres(database):
        # Imported only here: psycopg is an optional extra (``turnout[postgres]``).
        from gateway.responses_store.postgres import PostgresBackend

        opener = PostgresBackend
    else:
        from gateway.responses_store.sqlite import SqliteBackend

        opener = SqliteBackend
    return opener(database)


async def settled(call: Callable[[], T]) -> T:
    """``call()``, once more after fetching what it found missing from memory."""
    try:
        return call()
    except Unfetched as unfetched:
        await unfetched.fetch()
        return call()


class ResponseStore:
    """Owns the cache, the pending writes, the writer task and the database backend."""

    def __init__(self, settings: Responses, database: str, dropped: Counter | None = None) -> None:
        self._database = database
        self._dropped = dropped
        self._retention = settings.retention_hours * 3600
        self._max_bytes = settings.max_bytes
        self._cache_bytes = settings.cache_bytes
        self._max_pending = settings.max_pending_bytes
        self._cache: OrderedDict[str, StoredResponse] = OrderedDict()
        self._cached = 0
        self._backend: Backend | None = None
        # Written in order by the task: a record to insert, or an id to delete.
        self._pending: deque[StoredResponse | str] = deque()
        self._pending_bytes = 0
        # How many of ``_pending``'s first entries the writer is committing now.
        self._writing = 0
        # Not yet committed: what a cache miss must not read from (or miss in) the database.
        self._unwritten: dict[str, StoredResponse] = {}
        self._deleted: set[str] = set()
        self._absent: OrderedDict[str, None] = OrderedDict()
        # Moves on every delete another replica announced (``forget``), for ``_fetch``.
        self._forgets = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._pruned_at = 0.0
        # Responses dropped unwritten: the database was down longer than the bound allows.
        self.lost = 0

    async def start(self) -> None:
        """Open ``server.database``, bring its schema up to date and start the writer."""
        backend = backend_for(self._database)
        if backend is None:
            return
        await backend.open(self)
        self._backend = backend
        self._task = asyncio.get_running_loop().create_task(self._run(), name="responses-writer")

    # --- the request path ------------------------------------------------------------------------

    def put(self, record: StoredResponse) -> None:
        """Keep one response. O(1) but for cache eviction; never awaits; never raises."""
        if record.size > self._max_bytes:
            log.warning(
                "response %s (%d bytes) is over responses.max_bytes: not stored",
                record.id,
                record.size,
            )
            return
        self._remember(record)
        if self._backend is not None:
            self._unwritten[record.id] = record
            self._pending.append(record)
            self._pending_bytes += record.size
            if self._pending_bytes > self._max_pending:
                self._shed()

    def get(self, owner: Owner, response_id: str) -> StoredResponse | None:
        """The stored response ``response_id`` if ``owner`` may see it; None otherwise, alike
        for another caller's and for one that never existed. Raises ``Unfetched`` where it is
        only in a shared database."""
        record = self._cache.get(response_id)
        if record is not None:
            self._cache.move_to_end(response_id)
        else:
            record = self._unwritten.get(response_id) or self._read(response_id)
            if record is not None:
                self._remember(record)
        if record is None or record.owner != owner or self._expired(record):
            return None
        return record

    def conversation(
        self, owner: Owner, response_id: str, fallback: ResponseStore | None = None
    ) -> list[Item]:
        """Every item of the conversation up to and including response ``response_id``;
        turns this store lacks are looked up in ``fallback`` (a WebSocket's own turns go back
        to stored ones)."""
        turns: list[StoredResponse] = []
        next_id: str | None = response_id
        while next_id is not None:
            record = self.get(owner, next_id)
            if record is None and fallback is not None:
                record = fallback.get(owner, next_id)
            if record is None:
                raise NotFound(
                    f"previous response with id {next_id!r} not found",
                    param="previous_response_id",
                )
            turns.append(record)
            next_id = record.previous_id
        items: list[Item] = []
        for record in reversed(turns):
            items.extend(record.items())
        return items

    def delete(self, owner: Owner, response_id: str) -> bool:
        if self.get(owner, response_id) is None:
            return False
        record = self._cache.pop(response_id, None)
        if record is not None:
            self._cached -= record.size
        if self._backend is not None:
            self._unwritten.pop(response_id, None)
            self._deleted.add(response_id)
            self._pending.append(response_id)
            self._wake.set()
        return True

    # --- what a shared database says other replicas deleted (``Listener``) -----------------------

    def forget(self, response_ids: list[str]) -> None:
        self._forgets += 1
        for response_id in response_ids:
            record = self._cache.pop(response_id, None)
            if record is not None:
                self._cached -= record.size

    def cached(self) -> list[str]:
        return list(self._cache)

    def _remember(self, record: StoredResponse) -> None:
        cache = self._cache
        old = cache.pop(record.id, None)
        if old is not None:
            self._cached -= old.size
        if record.size > self._cache_bytes:
            return
        cache[record.id] = record
        self._cached += record.size
        while self._cached > self._cache_bytes:
            _, evicted = cache.popitem(last=False)
            self._cached -= evicted.size

    def _expired(self, record: StoredResponse) -> bool:
        return record.created_at < time.time() - self._retention

    def _read(self, response_id: str) -> StoredResponse | None:
        backend = self._backend
        if backend is None or response_id in self._deleted:
            return None
        if backend.read_inline is not None:
            return backend.read_inline(response_id)
        if response_id in self._absent:
            del self._absent[response_id]
            return None
        raise Unfetched(
            f"response {response_id!r} is not in this replica's memory",
            partial(self._fetch, response_id),
        )

    async def _fetch(self, response_id: str) -> None:
        """Read ``response_id`` and the turns before it into memory; what is missing is marked
        absent for the retry. Raises ``StoreUnavailable`` when the database does not answer."""
        found = await self._chain(response_id)
        if self._missing(response_id, found) is not None:
            # Another replica may have answered it a moment ago, its write still on its way
            # (a writer flushes every FLUSH_SECONDS): one more look before it is a 404.
            await asyncio.sleep(LANDING_SECONDS)
            found = await self._chain(response_id)
        missing = self._missing(response_id, found, remember=True)
        if missing is not None:
            self._absent[missing] = None
            if len(self._absent) > _ABSENT_MAX:
                self._absent.popitem(last=False)

    async def _chain(self, response_id: str) -> dict[str, StoredResponse]:
        backend = self._backend
        assert backend is not None
        failures: tuple[type[BaseException], ...] = (TimeoutError, *backend.errors)
        try:
            async with asyncio.timeout(FETCH_SECONDS):
                # A delete heard while the read was on its way may be of a row it returned:
                # read again rather than cache what is gone (deletes are rare; twice at most).
                for _ in range(3):
                    forgets = self._forgets
                    found = await backend.chain(response_id)
                    if forgets == self._forgets:
                        break
        except failures as exc:
            log.warning("stored responses: cannot read %s (%s)", response_id, exc)
            raise StoreUnavailable(
                f"the database of stored responses ({redacted(self._database)}) is unreachable "
                f"and response {response_id!r} is not in this replica's memory; try again",
                param="previous_response_id",
            ) from exc
        return {record.id: record for record in found}

    def _missing(
        self, response_id: str, found: dict[str, StoredResponse], remember: bool = False
    ) -> str | None:
        """The first turn back from ``response_id`` neither memory nor ``found`` holds."""
        next_id: str | None = response_id
        while next_id is not None:
            record = self._cache.get(next_id) or self._unwritten.get(next_id)
            if record is None:
                record = found.get(next_id)
                if record is None or next_id in self._deleted:
                    return next_id
                if remember:
                    self._remember(record)
            next_id = record.previous_id
        return None

    # --- the writer task: the only code that takes from ``_pending`` -----------------------------

    def _shed(self) -> None:
        """Drop the oldest unwritten responses past the bound (the database is down)."""
        # The batch being written stays: ``_write`` takes it off the front when it commits.
        writing = [self._pending.popleft() for _ in range(self._writing)]
        kept: deque[StoredResponse | str] = deque()
        while self._pending_bytes > self._max_pending and self._pending:
            entry = self._pending.popleft()
            if isinstance(entry, str):
                kept.append(entry)
                continue
            self._pending_bytes -= entry.size
            if self._unwritten.get(entry.id) is entry:
                del self._unwritten[entry.id]
            self.lost += 1
            if self._dropped is not None:
                self._dropped.inc()
            log.error(
                "stored responses: the database is behind by over responses.max_pending_bytes; "
                "response %s dropped unwritten (%d so far)",
                entry.id,
                self.lost,
            )
        self._pending.extendleft(reversed(kept))
        self._pending.extendleft(reversed(writing))

    async def _run(self) -> None:
        backend = self._backend
        assert backend is not None
        while not self._closing or self._pending:
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_SECONDS):
                        await self._wake.wait()
            self._wake.clear()
            try:
                if self._pending:
                    await self._write(backend)
                if time.monotonic() - self._pruned_at >= PRUNE_SECONDS:
                    self._pruned_at = time.monotonic()
                    await backend.prune(time.time() - self._retention, self._max_bytes)
            except backend.errors as exc:
                # Kept in memory and retried next tick: a locked or briefly full database
                # (or one that is down) must not lose what the cache still answers from.
                log.error("stored responses: write failed (%s); retrying", exc)
                if self._closing:
                    return
                await asyncio.sleep(FLUSH_SECONDS)

    async def _write(self, backend: Backend) -> None:
        batch = list(self._pending)
        self._writing = len(batch)
        # Inserts before deletes: ids are never reused, so a delete can only follow its insert.
        records = [entry for entry in batch if not isinstance(entry, str)]
        gone = [entry for entry in batch if isinstance(entry, str)]
        try:
            await backend.write(records, gone)
        finally:
            self._writing = 0
        for _ in batch:
            entry = self._pending.popleft()
            if isinstance(entry, str):
                self._deleted.discard(entry)
                continue
            self._pending_bytes -= entry.size
            if self._unwritten.get(entry.id) is entry:
                del self._unwritten[entry.id]

    async def stop(self) -> None:
        """Write what is pending, then close. Safe to call twice."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(task, 5.0)
            except Exception:
                log.exception("stored responses: writer failed at shutdown")
        if self._backend is not None:
            backend, self._backend = self._backend, None
            await backend.close()
