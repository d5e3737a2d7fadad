"""Agent memory on PostgreSQL (``memory.backend: postgresql``), shared by replicas.

The sqlite-vec store's behavioural cases (tests/test_memory_store.py) run again here, on the
``postgresql`` backend over a real throwaway cluster (tests/postgres_server.py) and the local
all-MiniLM-L6-v2 model; then two backends on one database, and two real gateways, stand in
for replicas: a memory stored through one is found through the other, a delete through one is
gone on the other, and the database down is a 503 for memory calls, never a failed chat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import msgspec
import numpy as np
import psycopg
import pytest

from gateway.config import Config, Server, from_mapping
from gateway.errors import ConfigError, StoreUnavailable
from gateway.plugins.memory.embeddings import LOCAL_MODEL, LocalEmbedder
from gateway.plugins.memory.items import NewItem, Scope
from gateway.plugins.memory.mirror import AgentVectors, Row, Tally
from gateway.plugins.memory.postgres_sql import Note, notes
from gateway.plugins.memory.postgres_store import PostgresStore
from gateway.plugins.memory.service import MemoryService
from gateway.plugins.memory.settings import (
    Memory,
    MemoryEmbeddings,
    backend_of,
    database_path,
)
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, running_gateway
from tests.test_memory_store import (  # noqa: F401  the same cases, on this module's fixture
    FACTS,
    contents,
    test_an_agent_never_finds_another_agents_items,
    test_delete_by_id_and_by_scope,
    test_filters_by_project_channel_kind_and_session,
    test_query_finds_the_item_that_means_the_same,
    test_recency_breaks_ties_between_equally_similar_items,
    test_stored_vectors_skip_the_model_and_must_match_its_size,
)
from tests.test_postgres import call, chat, gateway_config
from tests.test_usage import wait_until


async def open_service(database: str, **settings: object) -> MemoryService:
    service = MemoryService(
        msgspec.structs.replace(Memory(), **settings),
        PostgresStore(database),
        LocalEmbedder(MemoryEmbeddings()),
    )
    await service.start()
    return service


@pytest.fixture
async def memory(database: str) -> AsyncIterator[MemoryService]:
    service = await open_service(database)
    yield service
    await service.close()


def backend(service: MemoryService) -> PostgresStore:
    assert isinstance(service.backend, PostgresStore)
    return service.backend


def outage(database: str, allowed: bool) -> None:
    """Cut every connection to ``database`` and refuse new ones (or let them in again)."""
    name = database.rsplit("/", 1)[1]
    admin = database.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allowed).lower()}")
        if not allowed:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


# --- pure parts ---------------------------------------------------------------------------------


def test_auto_picks_postgresql_where_the_database_is_postgresql() -> None:
    url = "postgresql://app@db/turnout"
    shared = Config(server=Server(database=url))
    assert (backend_of(shared), database_path(shared)) == ("postgresql", url)
    local = Config(server=Server(database="/var/lib/turnout.db"))
    assert backend_of(local) == "sqlite-vec"


def test_a_postgresql_backend_without_a_url_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"memory.backend: postgresql needs a postgresql:// URL"):
        from_mapping({"memory": {"backend": "postgresql"}}, "test", {})
    with pytest.raises(ConfigError, match=r"memory.database: sqlite-vec keeps memories in a"):
        from_mapping(
            {"memory": {"backend": "sqlite-vec", "database": "postgresql://app@db/m"}}, "test", {}
        )


def test_change_notifications_stay_under_the_payload_limit() -> None:
    ids = list(range(10**12, 10**12 + 2000))
    pieces = notes("agent:sofia", added=ids, deleted=ids[:5])
    assert len(pieces) > 2 and all(len(piece) < 8000 for piece in pieces)
    decoded = [msgspec.json.decode(piece, type=Note) for piece in pieces]
    assert [i for note in decoded for i in note.added] == ids
    assert [i for note in decoded for i in note.deleted] == ids[:5]
    assert msgspec.json.decode(notes("x" * 5000, added=[1])[0], type=Note).stale


def test_a_copy_never_takes_back_a_deleted_item() -> None:
    mirror = AgentVectors(2)
    rows = [(i, "kb", "", "", "", 0.0, np.array([1, 0], np.float32).tobytes()) for i in (1, 2)]
    assert mirror.extend(rows) == 2
    snapshot = mirror.snapshot()
    mirror.begin_fetch()
    mirror.remove([1])
    # A fetch that read row 1 before its delete was heard brings it back: it is left out.
    assert mirror.extend(rows) == 0 and mirror.ids() == {2}
    assert [i for i, _ in snapshot.best(np.array([1, 0], np.float32), Scope("a"), 5)] == [2, 1]
    # A first load built off the loop, while a delete of row 1 was heard: adopted without it.
    first = AgentVectors(2)
    first.begin_fetch()
    first.remove([1])
    loaded = AgentVectors(2, stale=False)
    loaded.extend(rows)
    first.adopt(loaded, rows)
    assert first.ids() == {2}
    assert [i for i, _ in first.snapshot().best(np.array([1, 0], np.float32), Scope("a"), 5)] == [2]
    # No fetch in flight: nothing to guard against, so deleted ids are not kept on and on.
    first.end_fetch()
    first.remove([2])
    assert first.gone == set() and first.ids() == set()


def unit_rows(ids: range, dims: int = 4, kind: str = "kb") -> list[Row]:
    """Rows whose vectors all point the same way, so every one is among the best."""
    vector = np.full(dims, 1 / np.sqrt(dims), np.float32)
    return [(i, kind, "", "", "", 0.0, vector.tobytes()) for i in ids]


def found(vectors: AgentVectors) -> set[int]:
    query = np.ones(4, np.float32) / 2
    return {i for i, _ in vectors.snapshot().best(query, Scope("a"), 10**6)}


def test_a_delete_only_flags_the_row_and_a_compaction_drops_it_later() -> None:
    mirror = AgentVectors(4)
    mirror.extend(unit_rows(range(1, 101)))
    before = mirror.snapshot()
    assert mirror.remove([3, 4, 5]) == 3
    # Flagged, not copied: the rows stay until enough are dead to be worth a compaction.
    assert (mirror.size, mirror.dead(), mirror.needs_compaction()) == (100, 3, False)
    assert found(mirror) == set(range(1, 101)) - {3, 4, 5}
    assert len(before.best(np.ones(4, np.float32) / 2, Scope("a"), 1000)) == 100
    mirror.remove(range(6, 31))
    assert mirror.needs_compaction()
    compaction = mirror.compaction()
    mirror.compacted(compaction, compaction.build())
    assert (mirror.size, mirror.dead()) == (72, 0)
    assert found(mirror) == set(range(31, 101)) | {1, 2}
    assert mirror.snapshot().alive is None


def test_a_deleted_item_is_never_found_while_a_compaction_is_in_flight() -> None:
    mirror = AgentVectors(4)
    mirror.extend(unit_rows(range(1, 41)))
    mirror.remove(range(1, 21))
    compaction = mirror.compaction()
    built = compaction.build()  # what the worker thread returns, while the loop goes on:
    mirror.remove([25, 26])  # deleted after the compaction began
    mirror.extend(unit_rows(range(41, 300)))  # appended past its rows (and grown)
    mirror.remove([45, 299])
    assert found(mirror) == set(range(21, 300)) - {25, 26, 45, 299}
    mirror.compacted(compaction, built)
    assert found(mirror) == set(range(21, 300)) - {25, 26, 45, 299}
    assert mirror.ids() == set(range(21, 300)) - {25, 26, 45, 299}
    # 20 rows fewer (299 - 20); the four deleted since stay flagged for the next compaction.
    assert (mirror.size, mirror.dead()) == (279, 4)
    mirror.extend(unit_rows(range(300, 310)))
    assert found(mirror) == set(range(21, 310)) - {25, 26, 45, 299}


def test_a_large_copy_is_grown_ahead_by_a_rebuild_not_by_the_add_that_fills_it() -> None:
    mirror = AgentVectors(4)
    mirror.extend(unit_rows(range(1, 5001)))  # 10,000 rows of room
    mirror.extend(unit_rows(range(5001, 9001)))
    assert mirror.needs_room() and not mirror.needs_compaction()
    compaction = mirror.compaction()
    built = compaction.build()
    mirror.extend(unit_rows(range(9001, 9501)))  # added while it was built
    mirror.remove([7, 9200])
    mirror.compacted(compaction, built)
    assert not mirror.needs_room() and mirror.size == 9500
    assert found(mirror) == set(range(1, 9501)) - {7, 9200}


def test_the_tally_counts_every_copys_rows_until_it_is_dropped() -> None:
    tally = Tally()
    a, b = AgentVectors(4, tally), AgentVectors(4, tally)
    a.extend(unit_rows(range(1, 11)))
    b.extend(unit_rows(range(11, 16)))
    a.remove([1, 2, 3])
    assert tally.items == 15  # dead rows still cost memory until compacted
    compaction = a.compaction()
    a.compacted(compaction, compaction.build())
    assert tally.items == 12
    a.detach()
    a.extend(unit_rows(range(20, 30)))
    assert tally.items == 5


# --- the backend ----------------------------------------------------------------------------------


async def test_the_search_is_exact_over_many_items(database: str) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = PostgresStore(database)
    await store.open("test:vectors", 384)
    try:
        ids = np.array(await store.add([NewItem("a", "kb", str(i)) for i in range(3000)], vectors))
        for query in vectors[:5] + 0.05:
            query /= np.linalg.norm(query)
            exact = ids[np.argsort(-(vectors @ query))[:10]].tolist()
            assert [h.item.id for h in (await store.nearest(query, Scope("a"), 10))[:10]] == exact
        assert await store.count(Scope("a")) == 3000
    finally:
        await store.close()


def test_the_mirror_bound_must_be_at_least_one_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"memory.mirror_max_items: expected a number >= 1"):
        from_mapping({"memory": {"mirror_max_items": 0}}, "test", {})


def spread(count: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def test_copies_past_the_bound_are_dropped_least_recently_searched_first(
    database: str,
) -> None:
    store = PostgresStore(database, max_items=10)
    await store.open("test:vectors", 16)
    try:
        vectors = {
            agent: spread(n, seed)
            for seed, (agent, n) in enumerate((("ada", 4), ("bob", 4), ("cy", 4), ("huge", 25)))
        }
        ids = {
            agent: await store.add([NewItem(agent, "kb", str(i)) for i in range(len(v))], v)
            for agent, v in vectors.items()
        }

        async def best(agent: str) -> int:
            (hit, *_) = await store.nearest(vectors[agent][1], Scope(agent), 3)
            return hit.item.id

        assert await best("ada") == ids["ada"][1]
        assert await best("bob") == ids["bob"][1]
        assert await best("ada") == ids["ada"][1]  # ada is now the most recently searched
        assert await best("cy") == ids["cy"][1]  # 12 rows held: bob's copy goes
        assert (store.held("bob"), store.held("ada")) == (set(), set(ids["ada"]))
        assert store.held("cy") == set(ids["cy"])
        assert await best("bob") == ids["bob"][1]  # loaded again; ada's goes
        assert store.held("ada") == set() and store.held("bob") == set(ids["bob"])
        # Bigger than the whole bound: read, ranked exactly, and not kept.
        for probe in (3, 17):
            (hit, *_) = await store.nearest(vectors["huge"][probe], Scope("huge"), 3)
            assert hit.item.id == ids["huge"][probe]
            assert store.held("huge") == set()
        # Every copy went to make room for it.
        assert store.held("bob") == store.held("cy") == set()
        # An add to a held copy counts too; nothing is held past the bound.
        assert await best("bob") == ids["bob"][1]
        assert store.held("bob") == set(ids["bob"])
        await store.add([NewItem("bob", "kb", "more")] * 7, spread(7, 9))
        assert store.held("bob") == set()
    finally:
        await store.close()


async def test_deletes_heard_from_another_replica_are_never_found_and_compacted_away(
    database: str,
) -> None:
    a, b = PostgresStore(database), PostgresStore(database)
    await a.open("test:vectors", 16)
    await b.open("test:vectors", 16)
    try:
        await b.listening.wait()
        vectors = spread(40, 1)
        ids = await a.add([NewItem("ada", "kb", str(i)) for i in range(40)], vectors)
        assert len(await b.nearest(vectors[0], Scope("ada"), 40)) == 40
        for batch, left, dead in ((ids[:5], ids[5:], 5), (ids[5:12], ids[12:], 0)):
            await a.delete(Scope("ada"), batch)
            await wait_until(partial(lacks, b, batch))
            hits = await b.nearest(vectors[0], Scope("ada"), 40)
            assert {h.item.id for h in hits} == set(left)
            # 5 of 40 dead: only flagged; 12 of 40: that search compacted the copy first.
            assert b._mirrors["ada"].dead() == dead
        # 12 of 40 dead: the search above compacted the copy (on a worker thread).
        mirror = b._mirrors["ada"]
        assert (mirror.size, mirror.dead()) == (28, 0)
        assert {h.item.id for h in await b.nearest(vectors[20], Scope("ada"), 40)} == set(ids[12:])
    finally:
        await a.close()
        await b.close()


def lacks(store: PostgresStore, ids: list[int]) -> bool:
    return not store.held("ada") & set(ids)


async def test_the_size_comes_from_the_first_vectors_and_binds_every_replica(database: str) -> None:
    a, b = PostgresStore(database), PostgresStore(database)
    await a.open("gateway:embed", None)
    await b.open("gateway:embed", None)
    try:
        assert await b.nearest(np.ones(8, np.float32), Scope("x"), 5) == []
        (first,) = await a.add([NewItem("x", "kb", "eight")], np.eye(1, 8, dtype=np.float32))
        # B learns the size from the database, not from its own first store.
        (hit,) = await b.nearest(np.eye(1, 8, dtype=np.float32)[0], Scope("x"), 5)
        assert (hit.item.id, b.dims) == (first, 8)
        with pytest.raises(ValueError, match="8"):
            await b.add([NewItem("x", "kb", "four")], np.ones((1, 4), np.float32))
    finally:
        await a.close()
        await b.close()


async def test_a_database_refuses_vectors_from_another_embedder(database: str) -> None:
    first = await open_service(database)
    await first.store(FACTS[:1])
    await first.close()
    store = PostgresStore(database)
    with pytest.raises(ConfigError, match=LOCAL_MODEL):
        await store.open("gateway:other-model", None)
    await store.close()
    reopened = await open_service(database)
    assert contents(await reopened.search(Scope("agent:sofia"), 1, "Paris")) == [FACTS[0].content]
    await reopened.close()


async def test_what_one_replica_stores_the_other_finds_and_a_delete_reaches_both(
    database: str,
) -> None:
    async with AsyncExitStack() as stack:
        a = await open_service(database)
        stack.push_async_callback(a.close)
        b = await open_service(database)
        stack.push_async_callback(b.close)
        await b.store([NewItem("ada", "kb", "The staging server is called hermes.")])
        # B holds a copy of ada's vectors now; A's store reaches it by notification.
        assert len(await b.search(Scope("ada"), 5, "staging server")) == 1
        (paris,) = await a.store([NewItem("ada", "kb", "The capital of France is Paris.")])

        async def b_finds() -> list[str]:
            return contents(await b.search(Scope("ada"), 1, "capital of France"))

        for _ in range(100):
            if await b_finds() == ["The capital of France is Paris."]:
                break
            await asyncio.sleep(0.05)
        assert await b_finds() == ["The capital of France is Paris."]
        await a.search(Scope("ada"), 1, "capital")  # A holds a copy too
        assert paris in backend(a).held("ada")
        assert await b.delete(Scope("ada"), [paris]) == 1
        await wait_until(lambda: paris not in backend(a).held("ada"))
        assert "The capital of France is Paris." not in contents(
            await a.search(Scope("ada"), 5, "capital of France")
        )


async def test_a_listener_that_reconnects_catches_up_on_what_it_missed(database: str) -> None:
    async with AsyncExitStack() as stack:
        b = await open_service(database)
        stack.push_async_callback(b.close)
        await b.store([NewItem("ada", "kb", "The staging server is called hermes.")])
        assert len(await b.search(Scope("ada"), 5, "anything")) == 1
        vector = (await b.embed(["The capital of France is Paris."]))[0]
        # Written behind every replica's back: no notification.
        with psycopg.connect(database, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO memory_items (agent_id, kind, content, created_at, embedding)"
                " VALUES ('ada', 'kb', 'The capital of France is Paris.', 0, %s)",
                (vector.tobytes(),),
            )
        assert len(await b.search(Scope("ada"), 5, "anything")) == 1
        with psycopg.connect(database, autocommit=True) as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
            )

        async def found() -> int:
            return len(await b.search(Scope("ada"), 5, "anything"))

        for _ in range(100):
            if await found() == 2:
                break
            await asyncio.sleep(0.05)
        assert await found() == 2


async def test_the_database_down_fails_memory_calls_fast_and_clearly(
    memory: MemoryService, database: str
) -> None:
    await memory.store(FACTS[:2])
    outage(database, allowed=False)
    try:
        with pytest.raises(StoreUnavailable, match="memory: the database is unavailable"):
            await memory.search(Scope("agent:sofia"), 2, "capital")
        with pytest.raises(StoreUnavailable):
            await memory.store(FACTS[2:3])
    finally:
        outage(database, allowed=True)
    # Back: the next call opens a new connection.
    assert contents(await memory.search(Scope("agent:sofia"), 1, "capital"))[0] == FACTS[0].content


# --- two real gateways ----------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def memory_config(fake: FakeOpenAI, database: str) -> Any:
    return gateway_config(
        fake,
        database,
        plugins={"enabled": ["memory"]},
        memory={"auto": {"models": ["chat"]}},
    )


async def replicas(
    stack: AsyncExitStack, fake: FakeOpenAI, database: str
) -> tuple[RunningGateway, RunningGateway]:
    first = await stack.enter_async_context(running_gateway(memory_config(fake, database)))
    second = await stack.enter_async_context(running_gateway(memory_config(fake, database)))
    return first, second


async def query(gw: RunningGateway, text: str, path: str = "/v1/memory/query") -> Any:
    status, found = await call(gw, "POST", path, body={"agent_id": "ada", "query": text})
    assert status == 200, found
    return found


async def test_two_replicas_share_an_agents_memories(fake: FakeOpenAI, database: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await replicas(stack, fake, database)
        assert (await query(b, "anything"))["data"] == []  # B's copy of ada's vectors: empty
        body = {"agent_id": "ada", "kind": "kb", "content": "Deploys go out on Tuesdays."}
        status, stored = await call(a, "POST", "/v1/memory/store", body=body)
        assert status == 200, stored
        item_id = stored["id"]

        async def on_b() -> list[str]:
            return [i["id"] for i in (await query(b, "when do we deploy?"))["data"]]

        for _ in range(100):
            if await on_b() == [item_id]:
                break
            await asyncio.sleep(0.05)
        assert await on_b() == [item_id]
        status, _ = await call(b, "DELETE", f"/v1/memory/items/{item_id}?agent_id=ada")
        assert status == 200
        assert (await query(a, "when do we deploy?"))["data"] == []
        # Seed 004's endpoints, on the same store: stored through B, found through A.
        seed = {"agent_id": "ada", "kind": "dao-event", "content": "Vote 12 passed."}
        status, stored = await call(b, "POST", "/internal/agent-memory/store", body=seed)
        assert status == 200 and stored["ok"], stored
        found = await query(a, "which vote passed?", "/internal/agent-memory/query")
        assert [i["id"] for i in found["items"]] == [stored["id"]]


async def test_with_the_database_down_memory_answers_503_and_chat_goes_on(
    fake: FakeOpenAI, database: str
) -> None:
    async with AsyncExitStack() as stack:
        a, _ = await replicas(stack, fake, database)
        body = {"agent_id": "ada", "kind": "kb", "content": "Deploys go out on Tuesdays."}
        assert (await call(a, "POST", "/v1/memory/store", body=body))[0] == 200
        await query(a, "warm up")
        outage(database, allowed=False)
        try:
            status, answer = await call(
                a, "POST", "/v1/memory/query", body={"agent_id": "ada", "query": "x"}
            )
            assert status == 503, answer
            assert answer["error"]["code"] == "store_unavailable"
            assert "memory" in answer["error"]["message"]
            # Automatic memory is skipped (a log line), the chat is answered.
            assert await chat(a, "admin-secret") == 200
        finally:
            outage(database, allowed=True)
