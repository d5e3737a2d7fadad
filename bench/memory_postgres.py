"""Memory search latency: the ``postgresql`` backend against ``sqlite-vec``, same vectors.

    .venv/bin/python -m bench.memory_postgres [--items 10000] [--queries 100]

One agent holds ``--items`` items (clustered unit 384-d vectors: centres plus noise, so the
store is not uniform noise); each backend answers ``--queries`` searches for the 10 nearest
with the query vector given (embedding excluded), through the backend protocol as the
service calls it. PostgreSQL is a throwaway cluster on loopback (tests/postgres_server.py:
Debian's package, durability off). Reported per backend: store time, p50/p95 of a warm
search, and for PostgreSQL the first search (it loads the agent's vectors into the replica's
copy) and a search right after another replica added an item (fetched by id on the way).
Prints one JSON object and writes it to bench/results/memory-postgres-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.memory import ms
from gateway.plugins.memory.items import NewItem, Scope
from gateway.plugins.memory.postgres_store import PostgresStore
from gateway.plugins.memory.store import SqliteVecStore
from tests.postgres_server import PostgresServer

RESULTS = Path(__file__).resolve().parent / "results"
AGENT = "agent:bench"
DIMS = 384


def vectors(count: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, DIMS)).astype(np.float32)
    found = centres[rng.integers(0, 64, count)] + rng.normal(scale=0.6, size=(count, DIMS))
    found = found.astype(np.float32)
    found /= np.linalg.norm(found, axis=1, keepdims=True)
    return found


async def searches(store: Any, queries: Any) -> list[float]:
    took = []
    for query in queries:
        started = time.perf_counter()
        await store.nearest(query, Scope(AGENT), 10)
        took.append(time.perf_counter() - started)
    return took


async def fill(store: Any, data: Any) -> float:
    started = time.perf_counter()
    for start in range(0, len(data), 1000):
        chunk = data[start : start + 1000]
        await store.add(
            [NewItem(AGENT, "kb", f"item {start + i}") for i in range(len(chunk))], chunk
        )
    return time.perf_counter() - started


async def sqlite_vec(data: Any, queries: Any, directory: str) -> dict[str, Any]:
    store = SqliteVecStore(os.path.join(directory, "memory.db"))
    await store.open("bench:vectors", DIMS)
    try:
        stored = await fill(store, data)
        await searches(store, queries[:5])  # page cache
        return {"store_s": round(stored, 2), **ms(await searches(store, queries))}
    finally:
        await store.close()


async def postgresql(data: Any, queries: Any, url: str) -> dict[str, Any]:
    writer, reader = PostgresStore(url), PostgresStore(url)
    await writer.open("bench:vectors", DIMS)
    await reader.open("bench:vectors", DIMS)
    try:
        stored = await fill(writer, data)
        await asyncio.wait_for(reader.listening.wait(), 10)
        (first,) = await searches(reader, queries[:1])
        warm = await searches(reader, queries)
        after_add = []
        for query in queries[:20]:
            await writer.add([NewItem(AGENT, "kb", "new")], data[:1])
            await asyncio.sleep(0.05)  # the notification arrives; the search fetches the row
            after_add += await searches(reader, [query])
        return {
            "store_s": round(stored, 2),
            "first_search_ms": round(first * 1000, 1),
            **ms(warm),
            "after_another_replica_added": ms(after_add),
        }
    finally:
        await writer.close()
        await reader.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    data, queries = vectors(args.items, 1), vectors(args.queries, 2)
    result: dict[str, Any] = {"items": args.items, "queries": args.queries, "dims": DIMS}
    result["load_before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        result["sqlite-vec"] = await sqlite_vec(data, queries, directory)
    with PostgresServer() as server:
        result["postgresql"] = await postgresql(data, queries, server.new_database())
    result["load_after"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory-postgres-latest.json").write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
