"""What the API and the hooks call: store, search, summarise and forget, over one backend.

The service owns the embedder and the backend, and a background writer for the exchanges
automatic mode remembers: ``remember`` only queues, so after_response returns at once, and
the writer embeds whatever has queued up in one batch (embedding is most of a store's cost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.errors import BadRequest, NotFound, StoreUnavailable
from gateway.plugins.memory.backends import MemoryBackend
from gateway.plugins.memory.items import KINDS, Hit, MemoryItem, NewItem, Scope
from gateway.plugins.memory.ranking import rank
from gateway.plugins.memory.settings import Memory
from gateway.plugins.memory.summary import summary_messages

if TYPE_CHECKING:
    from gateway.plugins.memory.backends import Vectors
    from gateway.plugins.memory.embeddings import Embedder

log = logging.getLogger("turnout.memory")

# model, messages, max_tokens → the reply's text
Complete = Callable[[str, list[dict[str, Any]], int], Awaitable[str]]

# Exchanges waiting to be embedded and stored; past this, new ones are dropped (and counted).
MAX_PENDING = 10_000
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class MemoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stored = Counter(
            "turnout_memory_items_stored",
            "Memory items stored, by kind.",
            ("kind",),
            registry=registry,
        )
        self.dropped = Counter(
            "turnout_memory_items_dropped",
            "Exchanges automatic mode could not remember (queue full or store failed).",
            registry=registry,
        )
        self.search = Histogram(
            "turnout_memory_search_seconds",
            "Memory searches, embedding the query excluded.",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.embed = Histogram(
            "turnout_memory_embed_seconds",
            "Embedding one batch of memory text.",
            buckets=_BUCKETS,
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class Summary:
    id: int
    text: str
    items: int
    model: str


class MemoryService:
    def __init__(
        self,
        settings: Memory,
        backend: MemoryBackend,
        embedder: Embedder,
        complete: Complete | None = None,
        metrics: MemoryMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.embedder = embedder
        self._complete = complete
        self._metrics = metrics or MemoryMetrics(CollectorRegistry())
        self._queue: asyncio.Queue[NewItem] = asyncio.Queue(MAX_PENDING)
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The local embedder only begins loading here (see embeddings.py); the backend opens
        # now, so a database built by another embedder still stops start-up.
        await self.embedder.start()
        await self.backend.open(self.embedder.name, self.embedder.dims)
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    async def ready(self) -> None:
        """Wait for what loads in the background; call it before touching numpy."""
        await self.embedder.ready()

    async def close(self, grace_seconds: float = 10.0) -> None:
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace_seconds)
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.backend.close()
        await self.embedder.close()

    # --- the operations ------------------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> Vectors:
        started = time.perf_counter()
        vectors = await self.embedder.embed(texts)
        self._metrics.embed.observe(time.perf_counter() - started)
        return vectors

    async def store(self, items: Sequence[NewItem], vectors: Vectors | None = None) -> list[int]:
        """Store items; with ``vectors`` given (one per item) nothing is embedded."""
        for item in items:
            if item.kind not in KINDS:
                raise BadRequest(
                    f"kind: expected one of {', '.join(KINDS)}, got {item.kind!r}", param="kind"
                )
        if vectors is None:
            vectors = await self.embed([item.content for item in items])
        else:
            # Imported here: this module loads with the gateway's state, numpy (the memory
            # extra) only with the plugin, and only once the embedder's load brought it in.
            from gateway.plugins.memory.embeddings import normalized

            await self.ready()
            vectors = normalized(vectors)
        ids = await self.backend.add(items, vectors)
        for item in items:
            self._metrics.stored.labels(item.kind).inc()
        return ids

    async def search(
        self,
        scope: Scope,
        limit: int,
        text: str | None = None,
        vector: Vectors | None = None,
        now: float | None = None,
    ) -> list[Hit]:
        """The ``limit`` items most similar to ``text`` (or ``vector``), newer ones favoured."""
        if vector is None:
            vector = (await self.embed([text or ""]))[0]
        else:
            await self.ready()
        started = time.perf_counter()
        hits = await self.backend.nearest(vector, scope, limit)
        ranked = rank(
            hits,
            time.time() if now is None else now,
            self.settings.recency_weight,
            self.settings.recency_half_life_hours * 3600,
            limit,
        )
        self._metrics.search.observe(time.perf_counter() - started)
        return ranked

    async def recent(self, scope: Scope, limit: int) -> list[MemoryItem]:
        return await self.backend.recent(scope, limit)

    async def get(self, ids: Sequence[int]) -> list[MemoryItem]:
        return await self.backend.get(ids)

    async def delete(self, scope: Scope, ids: Sequence[int] = ()) -> int:
        return await self.backend.delete(scope, ids)

    async def summarize(self, scope: Scope, model: str, limit: int) -> Summary:
        """Summarise the newest ``limit`` items of the scope (earlier summaries left out)."""
        if scope.agent_id is None:
            raise BadRequest("summaries belong to an agent: name one (agent_id)", param="agent_id")
        if self._complete is None:
            raise BadRequest("summaries need a chat model, and none can be called here")
        kinds = scope.kinds or tuple(k for k in KINDS if k != "summary")
        items = await self.backend.recent(
            Scope(scope.agent_id, scope.project, scope.channel, scope.session_id, kinds), limit
        )
        if not items:
            raise NotFound("nothing to summarise: this scope holds no items")
        text = await self._complete(
            model, summary_messages(items), self.settings.summarize.max_tokens
        )
        summary = NewItem(
            agent_id=scope.agent_id,
            kind="summary",
            content=text,
            project=scope.project or "",
            channel=scope.channel or "",
            session_id=scope.session_id or "",
            meta={
                "model": model,
                "summarized": [item.id for item in items],
                "from": items[-1].created_at,
                "to": items[0].created_at,
            },
        )
        (summary_id,) = await self.store([summary])
        return Summary(summary_id, text, len(items), model)

    # --- automatic mode's writer ---------------------------------------------------------

    def remember(self, item: NewItem) -> None:
        """Queue an item to be embedded and stored in the background."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._metrics.dropped.inc()
            log.warning("memory: %d exchanges are waiting to be stored; dropped one", MAX_PENDING)

    async def flush(self) -> None:
        """Wait until everything ``remember`` queued is stored (or failed)."""
        await self._queue.join()

    async def _write_forever(self) -> None:
        batch_size = self.settings.embeddings.batch_size
        while True:
            batch = [await self._queue.get()]
            while len(batch) < batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.store(batch)
            except StoreUnavailable as exc:  # the shared database is down: no traceback
                self._metrics.dropped.inc(len(batch))
                log.warning("%s; %d remembered item(s) dropped", exc.message, len(batch))
            except Exception:
                self._metrics.dropped.inc(len(batch))
                log.exception("memory: could not store %d remembered item(s)", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()
