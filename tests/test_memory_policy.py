"""The memory plugin's pure parts: ranking, shard placement, prompt building, scoping SQL."""

from __future__ import annotations

from gateway.config import Config, Server, from_mapping
from gateway.plugins.memory.auto import (
    HEADER,
    TURNS_HEADER,
    applies,
    memory_block,
    unseen_turns,
    with_memory,
)
from gateway.plugins.memory.items import Hit, MemoryItem, Scope, kind_of
from gateway.plugins.memory.queries import code, items_where, knn_sql
from gateway.plugins.memory.ranking import candidates_per_shard, place, rank, recency
from gateway.plugins.memory.settings import MemoryAuto, database_path


def item(id: int, content: str = "x", created_at: float = 0.0, **meta: str) -> MemoryItem:
    return MemoryItem(id, "a", "conversation", content, "", "", "", dict(meta), created_at)


def hit(id: int, similarity: float, created_at: float = 0.0, content: str = "x") -> Hit:
    return Hit(item(id, content, created_at), similarity, similarity)


def test_shards_fill_in_order_and_continue_where_they_stopped() -> None:
    assert place(0, 0, 5, 2) == ([0, 0, 1, 1, 2], 2, 1)
    assert place(2, 1, 2, 2) == ([2, 3], 3, 1)
    assert place(0, 0, 0, 2) == ([], 0, 0)


def test_more_results_ask_each_shard_for_proportionally_more_candidates() -> None:
    assert candidates_per_shard(1) == candidates_per_shard(10) == 16
    assert candidates_per_shard(20) == 32
    assert candidates_per_shard(25) == 40


def test_recency_halves_every_half_life() -> None:
    assert recency(0, 10) == 1.0
    assert recency(10, 10) == 0.5
    assert recency(-5, 10) == 1.0  # a clock skewed into the future is "now"


def test_rank_blends_similarity_with_recency_and_cuts_to_limit() -> None:
    now = 1000.0
    hits = [hit(1, 0.80, created_at=0), hit(2, 0.75, created_at=now), hit(3, 0.1, created_at=now)]
    assert [h.item.id for h in rank(hits, now, 0.0, 100, 2)] == [1, 2]
    assert [h.item.id for h in rank(hits, now, 0.1, 100, 2)] == [2, 1]
    assert rank(hits, now, 0.1, 100, 3)[0].score == 0.85


def test_automatic_mode_applies_by_model_or_agent_globs() -> None:
    auto = MemoryAuto(models=("chat-*",), agents=("agent:sofia",))
    assert applies(auto, "chat-large", "anyone")
    assert applies(auto, "other", "agent:sofia")
    assert not applies(auto, "other", "agent:pm")
    assert not applies(MemoryAuto(), "chat", "agent:sofia")


def test_memory_goes_in_front_of_the_latest_user_message_not_into_the_prefix() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now?"},
    ]
    out = with_memory(messages, "MEMORY")
    assert out[:3] == messages[:3], "everything before the latest user message is untouched"
    assert out[3] == {"role": "user", "content": "MEMORY\n\nand now?"}
    assert messages[3]["content"] == "and now?"
    # After a tool result the latest user message is earlier; it still gets the block.
    tool_turn = [*messages, {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    assert with_memory(tool_turn, "M")[3]["content"] == "M\n\nand now?"
    assert with_memory(tool_turn, "M")[4] == tool_turn[4]
    parts = [{"role": "user", "content": [{"type": "text", "text": "S"}]}]
    assert with_memory(parts, "M")[0]["content"] == [
        {"type": "text", "text": "M"},
        {"type": "text", "text": "S"},
    ]
    # No user message at all: the system prompt is the only place left.
    alone = [{"role": "system", "content": "Be brief."}]
    assert with_memory(alone, "M") == [{"role": "system", "content": "Be brief.\n\nM"}]
    assert with_memory([], "M") == [{"role": "system", "content": "M"}]


def test_memory_block_lists_relevant_items_then_the_sessions_turns_within_budget() -> None:
    turns = [item(7, "User: a\nAssistant: b"), item(8, "User: c\nAssistant: d")]
    hits = [hit(1, 0.9, content="fact  one\nspans lines"), hit(7, 0.8), hit(2, 0.7, content="two")]
    block = memory_block(hits, turns, 10_000)
    lines = block.split("\n")
    assert lines[0] == HEADER and lines[1].endswith("] fact one spans lines")
    assert lines[2].endswith("] two"), "a turn shown below is not listed twice"
    assert lines[4] == TURNS_HEADER and block.endswith("User: c\nAssistant: d")
    assert memory_block([], [], 100) == ""
    short = memory_block(hits, turns, len(HEADER) + 60)
    assert short.count("\n- [") == 1 and "fact one" in short and TURNS_HEADER not in short
    assert len(short) <= len(HEADER) + 60


def test_turns_the_request_already_carries_are_not_repeated() -> None:
    turns = [item(1, user_message="first"), item(2, user_message="second")]
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}]
    assert [t.id for t in unseen_turns(turns, messages)] == [2]


def test_scope_sql_names_only_what_the_scope_fixes() -> None:
    assert items_where(Scope(None)) == ("", [])
    where, params = items_where(Scope("a", channel="c", kinds=("kb", "task")), [4])
    assert where == "WHERE agent_id = ? AND channel = ? AND kind IN (?, ?) AND id IN (?)"
    assert params == ["a", "c", "kb", "task", 4]
    sql = knn_sql(Scope("a", project="p", kinds=("kb",)), 3)
    assert sql.count("MATCH vec_bit(:q) AND k = :k") == 3
    # Hashed values in the coarse pass, the real ones in the exact re-rank.
    assert sql.count("AND agent_id = :agent AND project = :project_code AND kind IN (2)") == 3
    assert (
        "AND +agent_id = :agent AND +project = :project AND +kind IN ('kb')"
        " ORDER BY distance, id DESC LIMIT :m"
    ) in sql
    assert ":channel" not in sql and ":session" not in sql


def test_hashed_metadata_codes() -> None:
    assert code("") == 0
    assert code("channel-1") == code("channel-1") != code("channel-2")
    assert -(2**63) <= code("x" * 1000) < 2**63


def test_kind_names_from_seed_004() -> None:
    assert kind_of("dao-event") == "event"
    assert kind_of("kb") == "kb"
    assert kind_of("nonsense") is None


def test_the_memory_database_sits_beside_the_gateways_own() -> None:
    assert database_path(Config(server=Server(database="/var/lib/turnout.db"))) == (
        "/var/lib/turnout-memory.db"
    )
    assert database_path(Config(server=Server(database=":memory:"))) == ":memory:"
    config = from_mapping({"memory": {"database": "/data/m.db"}}, "test", {})
    assert database_path(config) == "/data/m.db"


def test_memory_config_is_validated_with_key_paths() -> None:
    import pytest

    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match=r"memory.summarize.model: unknown model 'nope'"):
        from_mapping({"memory": {"summarize": {"model": "nope"}}}, "test", {})
    with pytest.raises(ConfigError, match=r"memory.auto.top_k: expected a number >= 0"):
        from_mapping({"memory": {"auto": {"top_k": -1}}}, "test", {})
