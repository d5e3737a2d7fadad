"""The memory service on its real parts: sqlite-vec in SQLite (through sqlean.py) and the
local all-MiniLM-L6-v2 ONNX model, in a temporary database per test."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from gateway.errors import ConfigError, DriverError
from gateway.plugins.memory.driver import extension_path, find_driver
from gateway.plugins.memory.embeddings import LOCAL_MODEL, LocalEmbedder
from gateway.plugins.memory.items import Hit, NewItem, Scope
from gateway.plugins.memory.service import MemoryService
from gateway.plugins.memory.settings import Memory, MemoryEmbeddings
from gateway.plugins.memory.store import SqliteVecStore

FACTS = [
    NewItem("agent:sofia", "kb", "The capital of France is Paris.", project="dao:7"),
    NewItem("agent:sofia", "kb", "Bananas are a yellow fruit rich in potassium.", project="dao:7"),
    NewItem("agent:sofia", "task", "Deploy the gateway to production on Friday.", channel="ops"),
    NewItem("agent:sofia", "event", "The treasury vote passed with 70% in favour.", channel="gov"),
    NewItem("agent:pm", "kb", "The capital of Italy is Rome.", project="dao:7"),
]


async def open_service(database: Path, **settings: object) -> MemoryService:
    service = MemoryService(
        msgspec.structs.replace(Memory(), **settings),
        SqliteVecStore(str(database)),
        LocalEmbedder(MemoryEmbeddings()),
    )
    await service.start()
    return service


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[MemoryService]:
    service = await open_service(tmp_path / "memory.db")
    yield service
    await service.close()


def contents(hits: list[Hit]) -> list[str]:
    return [h.item.content for h in hits]


def test_the_driver_found_can_load_sqlite_vec() -> None:
    driver = find_driver()
    assert driver.package in ("sqlean.py", "pysqlite3", "sqlite3")
    assert driver.vec_version.startswith("v0.")


def test_the_extension_is_found_where_sqlite_vec_says_without_importing_it() -> None:
    # The driver does not import sqlite_vec (its __init__ imports numpy; see driver.py).
    import sqlite_vec  # type: ignore[import-untyped]

    assert extension_path() == sqlite_vec.loadable_path()


def test_without_a_driver_that_loads_extensions_start_up_says_how_to_fix_it() -> None:
    with pytest.raises(DriverError) as failure:
        find_driver((("not-installed", "no_such_sqlite_module"),))
    message = str(failure.value)
    assert "not-installed is not installed" in message
    assert "reinstall turnout" in message


async def test_the_local_model_embeds_offline_into_unit_vectors(memory: MemoryService) -> None:
    vectors = await memory.embed(["a cat sat on the mat", "a kitten rested on the rug", "tax law"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.5 > vectors[0] @ vectors[2]


async def test_the_model_loads_on_first_use_once_for_concurrent_first_callers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Start-up only checks the files (idle RSS and readiness stay low); the first callers,
    however many at once, share one load."""
    caplog.set_level(logging.INFO, "turnout.memory")
    embedder = LocalEmbedder(MemoryEmbeddings())
    try:
        await embedder.start()
        await asyncio.sleep(0.2)
        assert "loading the local embedding model" not in caplog.text
        first, second, _ = await asyncio.gather(
            embedder.embed(["a cat sat on the mat"]), embedder.embed(["tax law"]), embedder.ready()
        )
        assert first.shape == second.shape == (1, 384)
        assert caplog.text.count("loading the local embedding model") == 1
        await embedder.embed(["again"])
        assert caplog.text.count("loading the local embedding model") == 1
    finally:
        await embedder.close()


async def test_query_finds_the_item_that_means_the_same(memory: MemoryService) -> None:
    await memory.store(FACTS)
    hits = await memory.search(Scope("agent:sofia"), 2, "Which city is France's capital?")
    assert contents(hits)[0] == "The capital of France is Paris."
    assert hits[0].similarity > 0.6 > hits[1].similarity
    deploy = await memory.search(Scope("agent:sofia"), 1, "when do we ship to prod")
    assert contents(deploy) == ["Deploy the gateway to production on Friday."]


async def test_an_agent_never_finds_another_agents_items(memory: MemoryService) -> None:
    await memory.store(FACTS)
    hits = await memory.search(Scope("agent:pm"), 5, "capital of France")
    assert contents(hits) == ["The capital of Italy is Rome."]
    everyone = await memory.search(Scope(None), 5, "capital city")
    assert {h.item.agent_id for h in everyone} == {"agent:sofia", "agent:pm"}
    assert await memory.recent(Scope("agent:nobody"), 10) == []


async def test_filters_by_project_channel_kind_and_session(memory: MemoryService) -> None:
    await memory.store(
        [
            *FACTS,
            NewItem("agent:sofia", "conversation", "User: hi\nAssistant: hello", session_id="s1"),
        ]
    )
    sofia = "agent:sofia"
    assert contents(await memory.search(Scope(sofia, channel="ops"), 5, "capital")) == [
        "Deploy the gateway to production on Friday."
    ]
    in_project = await memory.search(Scope(sofia, project="dao:7"), 5, "anything")
    assert sorted(contents(in_project)) == sorted(c.content for c in FACTS[:2])
    events = await memory.search(Scope(sofia, kinds=("event", "task")), 5, "vote")
    assert contents(events) == [FACTS[3].content, FACTS[2].content]
    session = await memory.recent(Scope(sofia, session_id="s1"), 5)
    assert [i.content for i in session] == ["User: hi\nAssistant: hello"]


async def test_recency_breaks_ties_between_equally_similar_items(memory: MemoryService) -> None:
    now = 1_800_000_000.0
    old = NewItem("a", "kb", "The office wifi password is tulip42.", created_at=now - 30 * 86400)
    new = NewItem("a", "kb", "The office wifi password is tulip42!", created_at=now - 60)
    ids = await memory.store([old, new])
    hits = await memory.search(Scope("a"), 2, "wifi password", now=now)
    assert [h.item.id for h in hits] == [ids[1], ids[0]]
    assert hits[0].score - hits[0].similarity > hits[1].score - hits[1].similarity


async def test_delete_by_id_and_by_scope(memory: MemoryService) -> None:
    ids = await memory.store(FACTS)
    assert await memory.delete(Scope("agent:pm"), [ids[0]]) == 0, "not the pm's item"
    assert await memory.delete(Scope("agent:sofia"), [ids[0]]) == 1
    assert "The capital of France is Paris." not in contents(
        await memory.search(Scope("agent:sofia"), 5, "capital of France")
    )
    assert await memory.delete(Scope("agent:sofia", channel="ops")) == 1
    assert await memory.delete(Scope("agent:sofia")) == 2
    assert [i.agent_id for i in await memory.recent(Scope(None), 10)] == ["agent:pm"]
    # Ids are never reused: a client holding mem-5 cannot reach a newer item with it.
    (newer,) = await memory.store([NewItem("agent:pm", "kb", "later")])
    assert newer == ids[-1] + 1


async def test_stored_vectors_skip_the_model_and_must_match_its_size(
    memory: MemoryService,
) -> None:
    vectors = np.eye(2, 384, dtype=np.float32) * 3
    ids = await memory.store([NewItem("a", "kb", "x"), NewItem("a", "kb", "y")], vectors)
    hits = await memory.search(Scope("a"), 1, vector=np.eye(1, 384, 1, dtype=np.float32)[0])
    assert hits[0].item.id == ids[1] and hits[0].similarity == pytest.approx(1.0)
    with pytest.raises(ValueError, match="384"):
        await memory.store([NewItem("a", "kb", "z")], np.ones((1, 8), dtype=np.float32))


async def test_a_database_refuses_vectors_from_another_embedder(tmp_path: Path) -> None:
    database = tmp_path / "memory.db"
    first = await open_service(database)
    await first.store(FACTS[:1])
    await first.close()
    store = SqliteVecStore(str(database))
    with pytest.raises(ConfigError, match=LOCAL_MODEL):
        await store.open("gateway:other-model", None)
    reopened = await open_service(database)
    assert contents(await reopened.search(Scope("agent:sofia"), 1, "Paris")) == [FACTS[0].content]
    await reopened.close()


async def test_many_shards_keep_recall_against_exact_search(tmp_path: Path) -> None:
    """Small shards force the multi-shard path; the coarse pass must not lose neighbours."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 384)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 3000)] + rng.normal(scale=0.6, size=(3000, 384)).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = SqliteVecStore(str(tmp_path / "m.db"), shard_size=256)
    await store.open("test:vectors", 384)
    items = [NewItem("a", "kb", str(i)) for i in range(3000)]
    ids = np.array(await store.add(items, vectors))
    recalls = []
    for query in vectors[rng.integers(0, 3000, 30)] + 0.05:
        query /= np.linalg.norm(query)
        exact = set(ids[np.argsort(-(vectors @ query))[:10]].tolist())
        found = {h.item.id for h in (await store.nearest(query, Scope("a"), 10))[:10]}
        recalls.append(len(found & exact) / 10)
    await store.close()
    assert np.mean(recalls) >= 0.95
