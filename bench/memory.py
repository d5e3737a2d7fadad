"""Memory plugin: query latency and recall at 100,000 items of one scope, store throughput.

    .venv/bin/python -m bench.memory [--items 100000] [--queries 200] [--real 12000]

The parts are the shipped ones: ``MemoryService`` over the sqlite-vec store (sqlean.py's
SQLite, a temporary file, WAL) and the local all-MiniLM-L6-v2 int8 ONNX model.

Data. Real sentences need no download: comment lines of Python's own standard library (5+
words), embedded by the local model once and cached under ``~/.cache/turnout/``. ``--real``
of them are stored; the rest of ``--items`` are mixtures of two real embeddings plus a little
noise (normalised), so the store is as clustered as real text rather than uniform noise, on
which 1-bit codes would look better or worse than they are. Queries are other real sentences,
never stored, embedded by the same model.

Phases, one scope (one agent) throughout:

embed    the model alone: one short text at a time (a query), and batches of 64.
store    ``--items`` items with their vectors given, 1,000 per call (the target: at least
         5,000 items/s); then 1,000 more one per call; then 1,000 stored from text, so the
         model embeds them (items/s including embedding).
query    ``--queries`` searches for the 10 nearest with the query vector given (embedding
         excluded, as the target says), recency off so the ranking is pure similarity:
         p50/p95 latency, and recall@10 against exact search (numpy over every stored
         vector). The target: p50 <= 10 ms with recall@10 >= 0.95. Then the same with the
         query embedded (text in, 10 items out), and sqlite-vec's exact float KNN over the
         same vectors for comparison (a vec0 float[384] cosine table, ``--exact`` queries).

Two cores are shared with whatever else runs: the load average is reported before and after.
Prints one JSON object and writes it to bench/results/memory-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.plugins.memory.driver import find_driver
from gateway.plugins.memory.embeddings import LocalEmbedder
from gateway.plugins.memory.items import NewItem, Scope
from gateway.plugins.memory.ranking import CANDIDATES_PER_SHARD
from gateway.plugins.memory.service import MemoryService
from gateway.plugins.memory.settings import Memory, MemoryEmbeddings
from gateway.plugins.memory.store import SHARD_SIZE, SqliteVecStore

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "turnout"
AGENT = "agent:bench"
_COMMENT = re.compile(r"#\s*([A-Za-z][^\n]{30,200})")


def sentences() -> list[str]:
    """Distinct comment lines of the standard library, in a fixed pseudo-random order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for match in _COMMENT.finditer(text):
            line = match.group(1).strip()
            if len(line.split()) >= 5:
                seen.add(line)
    return sorted(seen, key=lambda s: hashlib.blake2b(s.encode(), digest_size=8).digest())


async def embedded(embedder: LocalEmbedder, texts: list[str]) -> np.ndarray:
    """Embeddings of ``texts``, cached by content (embedding 10k+ texts takes minutes)."""
    key = hashlib.blake2b("\n".join([embedder.name, *texts]).encode(), digest_size=10).hexdigest()
    path = CACHE / f"bench-memory-{key}.npy"
    if path.exists():
        cached: np.ndarray = np.load(path)
        return cached
    vectors = np.concatenate(
        [await embedder.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)]
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def mixtures(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    a = real[rng.integers(0, len(real), count)]
    b = real[rng.integers(0, len(real), count)]
    w = rng.uniform(0.15, 0.45, (count, 1)).astype(np.float32)
    mixed = (1 - w) * a + w * b + rng.normal(0, 0.02, (count, real.shape[1])).astype(np.float32)
    result: np.ndarray = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    return result


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 3),
    }


async def bench_embed(embedder: LocalEmbedder, texts: list[str]) -> dict[str, Any]:
    singles = []
    for text in texts[:100]:
        started = time.perf_counter()
        await embedder.embed([text])
        singles.append(time.perf_counter() - started)
    batch = texts[100:1124]
    started = time.perf_counter()
    for i in range(0, len(batch), 64):
        await embedder.embed(batch[i : i + 64])
    elapsed = time.perf_counter() - started
    return {"single_text": ms(singles), "batched_texts_per_s": round(len(batch) / elapsed, 1)}


async def bench_store(
    service: MemoryService, vectors: np.ndarray, texts: list[str]
) -> dict[str, Any]:
    items = [NewItem(AGENT, "kb", f"item {i}") for i in range(len(vectors))]
    started = time.perf_counter()
    for i in range(0, len(items), 1000):
        await service.store(items[i : i + 1000], vectors[i : i + 1000])
    batched = len(items) / (time.perf_counter() - started)
    spare = [NewItem("agent:other", "kb", f"single {i}") for i in range(1000)]
    started = time.perf_counter()
    for i, item in enumerate(spare):
        await service.store([item], vectors[i : i + 1])
    single = len(spare) / (time.perf_counter() - started)
    from_text = [NewItem("agent:other", "kb", text) for text in texts[:1000]]
    started = time.perf_counter()
    for i in range(0, len(from_text), 64):
        await service.store(from_text[i : i + 64])
    with_embedding = len(from_text) / (time.perf_counter() - started)
    return {
        "items_per_s_vectors_given_1000_per_call": round(batched),
        "items_per_s_vectors_given_1_per_call": round(single),
        "items_per_s_including_embedding_64_per_call": round(with_embedding, 1),
    }


async def bench_query(
    service: MemoryService, stored: np.ndarray, queries: np.ndarray
) -> dict[str, Any]:
    scope = Scope(AGENT)
    for query in queries[:20]:
        await service.search(scope, 10, vector=query)
    latencies, recalls = [], []
    for query in queries:
        started = time.perf_counter()
        hits = await service.search(scope, 10, vector=query)
        latencies.append(time.perf_counter() - started)
        exact = set((np.argsort(-(stored @ query))[:10] + 1).tolist())
        recalls.append(len({h.item.id for h in hits} & exact) / 10)
    return {**ms(latencies), "recall_at_10": round(float(np.mean(recalls)), 4)}


async def bench_query_text(service: MemoryService, texts: list[str]) -> dict[str, Any]:
    latencies = []
    for text in texts:
        started = time.perf_counter()
        await service.search(Scope(AGENT), 10, text=text)
        latencies.append(time.perf_counter() - started)
    return ms(latencies)


def bench_exact_vec0(vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """sqlite-vec's own exact KNN over float vectors: what the coarse pass is measured against."""
    driver = find_driver()
    with tempfile.TemporaryDirectory() as folder:
        connection: Any = driver.connector(str(Path(folder) / "exact.db"))()
        connection.execute(
            f"CREATE VIRTUAL TABLE v USING vec0(e FLOAT[{vectors.shape[1]}] distance_metric=cosine)"
        )
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO v (rowid, e) VALUES (?, ?)",
            ((i + 1, vectors[i].tobytes()) for i in range(len(vectors))),
        )
        connection.execute("COMMIT")
        latencies = []
        for query in queries:
            started = time.perf_counter()
            connection.execute(
                "SELECT rowid FROM v WHERE e MATCH ? AND k = 10", (query.tobytes(),)
            ).fetchall()
            latencies.append(time.perf_counter() - started)
        connection.close()
    return ms(latencies)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    rng = np.random.default_rng(7)
    texts = sentences()
    query_texts = texts[: args.queries]
    real_texts = texts[args.queries : args.queries + args.real]
    embedder = LocalEmbedder(MemoryEmbeddings())
    await embedder.start()
    await embedder.ready()  # the model loads in the background; time embedding, not the load
    embed = await bench_embed(embedder, real_texts)
    real = await embedded(embedder, real_texts)
    queries = await embedded(embedder, query_texts)
    stored = np.concatenate([real, mixtures(real, max(args.items - len(real), 0), rng)])
    stored = stored[: args.items]
    with tempfile.TemporaryDirectory(prefix="turnout-bench-memory-") as folder:
        service = MemoryService(
            Memory(recency_weight=0.0), SqliteVecStore(str(Path(folder) / "m.db")), embedder
        )
        await service.start()
        store = await bench_store(service, stored, real_texts)
        query = await bench_query(service, stored, queries)
        query_text = await bench_query_text(service, query_texts[:50])
        await service.close()
    exact = bench_exact_vec0(stored, queries[: args.exact])
    return {
        "items_in_scope": len(stored),
        "real_sentences_stored": len(real),
        "shard_size": SHARD_SIZE,
        "candidates_per_shard": CANDIDATES_PER_SHARD,
        "embed": embed,
        "store": store,
        "query_vector_given": query,
        "query_from_text": query_text,
        "sqlite_vec_exact_knn_float": exact,
        "targets": {
            "query_p50_ms<=10": query["p50_ms"] <= 10,
            "recall_at_10>=0.95": query["recall_at_10"] >= 0.95,
            "store_items_per_s>=5000": store["items_per_s_vectors_given_1000_per_call"] >= 5000,
        },
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--real", type=int, default=12_000, help="real sentences stored")
    parser.add_argument("--exact", type=int, default=20, help="queries for the exact baseline")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory-latest.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
