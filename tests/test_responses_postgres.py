"""Stored Responses on PostgreSQL (gateway/responses_store/postgres.py): two replicas on one
real throwaway cluster (tests/postgres_server.py), clients going to either.

A response stored through one replica is continued (``previous_response_id``), read and
deleted through the other; a delete through one reaches the other's cache by NOTIFY; each key
sees only its own; and the database down fails no request that needs no stored response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from gateway.config.responses import Responses
from gateway.metrics import Metrics
from gateway.responses_store import store as store_module
from gateway.responses_store.postgres import payloads
from gateway.responses_store.store import ResponseStore, settled
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, running_gateway
from tests.postgres_server import PostgresServer
from tests.test_postgres import call, chat, gateway_config, pg_rows
from tests.test_responses_store_db import ALICE, record
from tests.test_usage import wait_until


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def store_of(gw: RunningGateway) -> ResponseStore:
    store: ResponseStore = gw.app.state.gateway.responses
    return store


def stored_ids(database: str) -> set[str]:
    return {row[0] for row in pg_rows(database, "SELECT id FROM stored_responses")}


async def new_key(first: RunningGateway, second: RunningGateway, agent: str) -> str:
    """A key created through ``first``, once ``second`` has it too (its key refresh)."""
    status, created = await call(first, "POST", "/v1/keys", body={"agent": agent})
    assert status == 201, created
    secret: str = created["key"]
    for _ in range(100):
        if await chat(second, secret) == 200:
            return secret
        await asyncio.sleep(0.1)
    raise AssertionError("the key never reached the second replica")


async def replicas(
    stack: AsyncExitStack, fake: FakeOpenAI, database: str
) -> tuple[RunningGateway, RunningGateway, str]:
    first = await stack.enter_async_context(running_gateway(gateway_config(fake, database)))
    second = await stack.enter_async_context(running_gateway(gateway_config(fake, database)))
    return first, second, await new_key(first, second, "ada")


def last_messages(fake: FakeOpenAI) -> Any:
    return [r.body for r in fake.requests if r.method == "POST"][-1]["messages"]


def test_deleted_ids_go_in_notifications_under_the_payload_limit() -> None:
    ids = [f"resp_{n:040d}" for n in range(400)]
    pieces = payloads(ids)
    assert len(pieces) > 1 and all(len(piece) < 8000 for piece in pieces)
    assert [i for piece in pieces for i in piece.split()] == ids
    assert payloads([]) == []


async def test_a_response_stored_through_one_replica_is_continued_and_read_through_another(
    fake: FakeOpenAI, database: str
) -> None:
    async with AsyncExitStack() as stack:
        first, second, secret = await replicas(stack, fake, database)
        on_a: AsyncOpenAI = first.openai(api_key=secret)
        on_b: AsyncOpenAI = second.openai(api_key=secret)
        asked = await on_a.responses.create(model="chat", input="my name is Ada")
        await wait_until(lambda: asked.id in stored_ids(database))
        answered = await on_b.responses.create(
            model="chat", input="what is my name?", previous_response_id=asked.id
        )
        # B had never seen it: it read the conversation from PostgreSQL and replayed it.
        assert last_messages(fake) == [
            {"role": "user", "content": "my name is Ada"},
            {"role": "assistant", "content": "echo: my name is Ada"},
            {"role": "user", "content": "what is my name?"},
        ]
        assert answered.previous_response_id == asked.id
        await wait_until(lambda: answered.id in stored_ids(database))
        # And back on A, a third turn over both: A reads B's turn, its own from memory.
        third = await on_a.responses.create(
            model="chat", input="again?", previous_response_id=answered.id
        )
        assert [m["content"] for m in last_messages(fake)] == [
            "my name is Ada",
            "echo: my name is Ada",
            "what is my name?",
            "echo: what is my name?",
            "again?",
        ]
        fetched = await on_b.responses.retrieve(asked.id)
        items = await on_b.responses.input_items.list(asked.id)
    assert third.previous_response_id == answered.id
    assert fetched.output_text == "echo: my name is Ada"
    assert [item.type for item in items.data] == ["message"]


async def test_a_response_continued_at_once_through_the_other_replica_waits_for_its_write(
    fake: FakeOpenAI, database: str
) -> None:
    async with AsyncExitStack() as stack:
        first, second, secret = await replicas(stack, fake, database)
        on_a, on_b = first.openai(api_key=secret), second.openai(api_key=secret)
        asked = await on_a.responses.create(model="chat", input="quick")
        # No wait for A's writer: B looks again once before it calls the id unknown.
        answered = await on_b.responses.create(
            model="chat", input="follow-up", previous_response_id=asked.id
        )
        with pytest.raises(openai.NotFoundError):
            await on_b.responses.retrieve("resp_never_was")
    assert answered.previous_response_id == asked.id


async def test_a_delete_through_one_replica_is_a_404_on_the_other_that_had_it_cached(
    fake: FakeOpenAI, database: str
) -> None:
    async with AsyncExitStack() as stack:
        first, second, secret = await replicas(stack, fake, database)
        on_a, on_b = first.openai(api_key=secret), second.openai(api_key=secret)
        created = await on_a.responses.create(model="chat", input="forget me")
        assert (await on_a.responses.retrieve(created.id)).id == created.id  # in A's cache
        await wait_until(lambda: created.id in stored_ids(database))
        await on_b.responses.delete(created.id)
        await wait_until(lambda: created.id not in stored_ids(database))

        # A heard the delete (NOTIFY) and dropped it from memory: a 404 at once, not a stale hit.
        async def gone_on_a() -> bool:
            try:
                await on_a.responses.retrieve(created.id)
            except openai.NotFoundError:
                return True
            return False

        for _ in range(100):
            if await gone_on_a():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the delete through B never reached A's cache")
        with pytest.raises(openai.NotFoundError) as continued:
            await on_a.responses.create(model="chat", input="and?", previous_response_id=created.id)
        with pytest.raises(openai.NotFoundError):
            await on_b.responses.delete(created.id)
    assert continued.value.body is not None
    assert continued.value.status_code == 404


async def test_each_key_sees_only_its_own_responses_on_every_replica(
    fake: FakeOpenAI, database: str
) -> None:
    async with AsyncExitStack() as stack:
        first, second, alice = await replicas(stack, fake, database)
        bob = await new_key(second, first, "bob")
        as_alice_on_a = first.openai(api_key=alice)
        as_bob_on_b, as_alice_on_b = second.openai(api_key=bob), second.openai(api_key=alice)
        created = await as_alice_on_a.responses.create(model="chat", input="secret plans")
        await wait_until(lambda: created.id in stored_ids(database))
        refusals = []
        for attempt in (
            as_bob_on_b.responses.retrieve(created.id),
            as_bob_on_b.responses.delete(created.id),
            as_bob_on_b.responses.create(model="chat", input="x", previous_response_id=created.id),
        ):
            with pytest.raises(openai.NotFoundError) as caught:
                await attempt
            refusals.append(caught.value.status_code)
        # Bob's read put it in B's cache; Alice still gets it there, Bob still does not.
        mine = await as_alice_on_b.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await as_bob_on_b.responses.input_items.list(created.id)
    assert refusals == [404, 404, 404]
    assert mine.output_text == "echo: secret plans"
    assert stored_ids(database) == {created.id}


async def test_postgresql_down_fails_no_request_that_needs_no_stored_response(
    fake: FakeOpenAI,
) -> None:
    with PostgresServer() as server:
        database = server.new_database()
        async with AsyncExitStack() as stack:
            first, second, secret = await replicas(stack, fake, database)
            on_a, on_b = first.openai(api_key=secret), second.openai(api_key=secret)
            kept = await on_a.responses.create(model="chat", input="before")
            await wait_until(lambda: kept.id in stored_ids(database))
            await asyncio.to_thread(server.stop)

            # store: true answers while the database is down; the writes wait in memory.
            during = [
                await on_a.responses.create(model="chat", input=f"during {n}") for n in range(3)
            ]
            assert store_of(first)._pending, "the writes wait for the database"
            # A continuation A has in memory needs no database.
            more = await on_a.responses.create(
                model="chat", input="more", previous_response_id=kept.id
            )
            # One B never cached cannot be read: a clear 503 in OpenAI's envelope, soon.
            started = asyncio.get_running_loop().time()
            with pytest.raises(openai.InternalServerError) as refused:
                await on_b.responses.create(model="chat", input="x", previous_response_id=kept.id)
            waited = asyncio.get_running_loop().time() - started
            assert refused.value.status_code == 503
            assert isinstance(refused.value.body, dict)
            assert refused.value.body["code"] == "store_unavailable"
            assert waited < 15, waited
            # Requests that need no stored response pass on B as well.
            assert (await on_b.responses.create(model="chat", input="plain", store=False)).id

            await asyncio.to_thread(server.start)
            wanted = {kept.id, more.id, *(r.id for r in during)}
            await wait_until(lambda: wanted <= stored_ids(database), seconds=30)
            # Now B reads what A wrote during the outage.
            after = await on_b.responses.create(
                model="chat", input="after", previous_response_id=during[-1].id
            )
    assert after.previous_response_id == during[-1].id
    assert store_of(first).lost == 0


async def test_a_replica_whose_listener_lost_its_connection_rechecks_its_cache(
    fake: FakeOpenAI, database: str
) -> None:
    async with AsyncExitStack() as stack:
        first, second, secret = await replicas(stack, fake, database)
        on_a, on_b = first.openai(api_key=secret), second.openai(api_key=secret)
        created = await on_a.responses.create(model="chat", input="cached on A")
        kept = await on_a.responses.create(model="chat", input="also cached on A")
        await wait_until(lambda: {created.id, kept.id} <= stored_ids(database))
        # Every listener's connection cut: a delete now may go unheard, so each replica,
        # once listening again, asks which of the responses it holds still exist.
        pg_rows(
            database,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
        )
        await on_b.responses.delete(created.id)
        await wait_until(lambda: created.id not in stored_ids(database))
        for _ in range(100):
            try:
                await on_a.responses.retrieve(created.id)
            except openai.NotFoundError:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("A kept answering a response deleted through B")
        # What still exists stays in A's memory.
        assert kept.id in store_of(first)._cache


async def test_past_max_pending_bytes_in_an_outage_the_oldest_responses_are_dropped_and_counted() -> (
    None
):
    with PostgresServer() as server:
        database = server.new_database()
        one = record("resp_0").size
        metrics = Metrics()
        settings = Responses(max_pending_bytes=2 * one + 10)
        store = ResponseStore(settings, database, metrics.responses_dropped)
        await store.start()
        try:
            await asyncio.to_thread(server.stop)
            for n in range(4):
                store.put(record(f"resp_{n}"))
            assert store.lost == 2
            dropped = metrics.registry.get_sample_value("turnout_stored_responses_dropped_total")
            assert dropped == 2
            # All four still answer from memory meanwhile.
            assert [store.get(ALICE, f"resp_{n}") is not None for n in range(4)] == [True] * 4
            await asyncio.to_thread(server.start)
            await wait_until(lambda: not store._pending, seconds=30)
        finally:
            await store.stop()
        assert stored_ids(database) == {"resp_2", "resp_3"}


async def test_retention_and_the_size_cap_prune_postgresql_and_every_replicas_cache(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = record("resp_1").size
    settings = Responses(retention_hours=1, max_bytes=2 * one + 10)
    pruning, other = ResponseStore(settings, database), ResponseStore(settings, database)
    await other.start()
    monkeypatch.setattr(store_module, "PRUNE_SECONDS", 0.0)
    await pruning.start()
    try:
        now = time.time()
        pruning.put(record("resp_0", created=now - 7200))  # past retention
        pruning.put(record("resp_1", created=now + 1))
        await wait_until(lambda: stored_ids(database) == {"resp_1"})
        # The other replica reads resp_1 into its cache; then the size cap takes it.
        assert await settled(lambda: other.get(ALICE, "resp_1")) is not None
        for n in (2, 3):
            pruning.put(record(f"resp_{n}", created=now + n))
        await wait_until(lambda: stored_ids(database) == {"resp_2", "resp_3"}, seconds=15)
        # The prune announced what it deleted: gone from the other's memory too.
        await wait_until(lambda: "resp_1" not in other._cache, seconds=15)
    finally:
        await pruning.stop()
        await other.stop()
