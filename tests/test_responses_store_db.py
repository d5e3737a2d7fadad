"""``ResponseStore`` on a real SQLite file: the cache, the batched writer, retention and the size
cap; and the pure parts around it (input-item pages, a stream's final Response)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

from gateway.config import from_mapping
from gateway.config.responses import Responses
from gateway.errors import BadRequest, ConfigError, NotFound
from gateway.responses_store import store as store_module
from gateway.responses_store.listing import page, with_ids
from gateway.responses_store.recording import final_response
from gateway.responses_store.records import Owner, StoredResponse
from gateway.responses_store.store import ResponseStore
from gateway.translate.responses_compaction import (
    SUMMARY_HEADER,
    compaction_messages,
    seal,
    unseal,
)

ALICE = Owner("key-a", "agent-a")
BOB = Owner("key-b", "agent-b")


def record(
    response_id: str, previous: str | None = None, text: str = "hi", created: float | None = None
) -> StoredResponse:
    user = [{"type": "message", "role": "user", "content": f"q {response_id}"}]
    response = {
        "id": response_id,
        "object": "response",
        "status": "completed",
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text}],
            }
        ],
    }
    return StoredResponse(
        response_id,
        ALICE,
        time.time() if created is None else created,
        previous,
        "chat",
        msgspec.json.encode(user),
        msgspec.json.encode(response),
    )


async def flushed(store: ResponseStore) -> None:
    # The writer commits every FLUSH_SECONDS; wait until nothing is pending.
    for _ in range(200):
        if not store._pending:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the writer never committed")


def rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM stored_responses ORDER BY id")]


async def test_a_conversation_read_back_from_the_database_after_the_cache_let_go(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    # A cache too small for even one record: every read goes to SQLite.
    store = ResponseStore(Responses(cache_bytes=1), str(path))
    await store.start()
    try:
        store.put(record("resp_1"))
        store.put(record("resp_2", previous="resp_1"))
        # Before the commit the pending records still answer.
        assert [i.role for i in store.conversation(ALICE, "resp_2")] == [
            "user",
            "assistant",
            "user",
            "assistant",
        ]
        await flushed(store)
        assert rows(path) == ["resp_1", "resp_2"]
        items = store.conversation(ALICE, "resp_2")
        assert [i.content for i in items if isinstance(i.content, str)] == ["q resp_1", "q resp_2"]
        with pytest.raises(NotFound):
            store.conversation(BOB, "resp_2")
        assert store.delete(ALICE, "resp_1")
        assert store.get(ALICE, "resp_1") is None
        with pytest.raises(NotFound) as caught:
            store.conversation(ALICE, "resp_2")
        assert caught.value.param == "previous_response_id"
        await flushed(store)
        assert rows(path) == ["resp_2"]
    finally:
        await store.stop()


async def test_retention_and_the_size_cap_delete_the_oldest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.db"
    one = record("resp_1").size
    store = ResponseStore(Responses(retention_hours=1, max_bytes=2 * one + 10), str(path))
    monkeypatch.setattr(store_module, "PRUNE_SECONDS", 0.0)
    await store.start()
    try:
        now = time.time()
        store.put(record("resp_0", created=now - 7200))  # past retention
        for n in (1, 2, 3):
            store.put(record(f"resp_{n}", created=now + n))
        assert store.get(ALICE, "resp_0") is None  # expired reads as missing at once
        await flushed(store)
        await asyncio.sleep(store_module.FLUSH_SECONDS * 3)
        # Two fit under max_bytes: the newest two stay.
        assert rows(path) == ["resp_2", "resp_3"]
    finally:
        await store.stop()


async def test_a_memory_database_keeps_responses_in_the_cache_alone() -> None:
    store = ResponseStore(Responses(), ":memory:")
    await store.start()
    store.put(record("resp_1"))
    assert store.get(ALICE, "resp_1") is not None
    assert store.get(BOB, "resp_1") is None
    await store.stop()


def test_input_items_page_by_id_in_either_order() -> None:
    items = with_ids("resp_abc", b'[{"role":"user","content":"a"},{"type":"message","id":"m2"}]')
    assert [i["id"] for i in items] == ["msg_abc_0", "m2"]
    assert items[0]["content"] == [{"type": "input_text", "text": "a"}]
    first = page(items, None, 1, "desc")
    assert first["data"][0]["id"] == "m2" and first["has_more"] is True
    rest = page(items, "m2", 1, "desc")
    assert rest["data"][0]["id"] == "msg_abc_0" and rest["has_more"] is False
    for args, field in (
        ((None, 1, "up"), "order"),
        ((None, 0, "asc"), "limit"),
        (("nope", 5, "asc"), "after"),
    ):
        with pytest.raises(BadRequest) as caught:
            page(items, *args)
        assert caught.value.param == field


def test_a_streams_final_response_is_found_in_its_closing_pieces() -> None:
    text = b'"' + b"x" * 70000 + b'"'
    pieces = [
        b'event: response.output_text.done\ndata: {"text":',
        text,
        b'}\n\nevent: response.completed\ndata: {"type":"response.completed",'
        b'"sequence_number":9,"response":{"id":"resp_9","status":"completed","output":[{"t":',
        text,
        b"}]}}\n\n",
    ]
    found = final_response(pieces)
    assert found is not None
    assert msgspec.json.decode(found)["id"] == "resp_9"
    assert final_response([b"event: response.failed\ndata: {}\n\n"]) is None


def test_a_foreign_compaction_item_is_dropped_and_ours_replays_as_the_summary() -> None:
    ours = compaction_messages(seal("the user wants a blue page"))
    assert ours == [{"role": "user", "content": SUMMARY_HEADER + "the user wants a blue page"}]
    # OpenAI's own compaction items are ciphertext only OpenAI can read.
    assert compaction_messages("gAAAAABo-openai-ciphertext") == []
    assert unseal(seal("ünïcode")) == "ünïcode"


def test_responses_settings_are_checked_naming_the_key() -> None:
    raw = {
        "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9"}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": "m"}]}],
    }
    for responses, expected in (
        ({"summariser": "nope"}, "responses.summariser: unknown model 'nope'"),
        ({"max_bytes": 0}, "responses.max_bytes: expected a number > 0"),
        ({"max_pending_bytes": 0}, "responses.max_pending_bytes: expected a number > 0"),
    ):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            from_mapping({**raw, "responses": responses}, "routing.yaml", {})
    assert from_mapping({**raw, "responses": {"summariser": "chat"}}, "r", {}).responses.store
