"""/v1/memory and seed 004's /internal/agent-memory through a real gateway, over plain HTTP.

The memory plugin is enabled as any plugin is (``plugins.enabled: [memory]``); its parts are
real: sqlite-vec, the local ONNX embedding model, and, for summaries and gateway embeddings,
a fake upstream behind the gateway's own routing. Callers are told apart by virtual keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.keys import connect, create_key
from gateway.plugins.memory.embeddings import PACKAGED_DIMS
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

ADMIN = "sk-admin-memory"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def raw_config(fake: FakeOpenAI, database: Path, **memory: Any) -> dict[str, Any]:
    return {
        "server": {"database": str(database)},
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [
            {"name": "chat", "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "embed", "targets": [{"provider": "up", "model": "ok"}]},
        ],
        "routing": {"retries": 0},
        "plugins": {"enabled": ["memory"]},
        "memory": {"summarize": {"model": "chat"}, **memory},
    }


def new_key(database: Path, agent: str, trusted: bool = False) -> str:
    connection = connect(str(database))
    secret, _ = create_key(connection, agent, agent, trusted=trusted)
    connection.close()
    return secret


async def call(
    gw: RunningGateway,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
    **headers: str,
) -> tuple[int, Any]:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gw.url + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


def texts(answer: dict[str, Any]) -> list[str]:
    return [item["content"] for item in answer["data"]]


async def test_store_query_get_and_delete(fake: FakeOpenAI, tmp_path: Path) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        status, stored = await call(
            gw,
            "POST",
            "/v1/memory/store",
            {
                "channel": "ops",
                "items": [
                    {"content": "Deploys happen on Fridays after 18:00 UTC.", "kind": "kb"},
                    {"content": "Rotate the TLS certificate before March.", "kind": "task"},
                    {"content": "Lunch is at noon.", "kind": "kb", "channel": "office"},
                ],
            },
        )
        assert status == 200 and stored["ids"] == ["mem-1", "mem-2", "mem-3"]

        status, found = await call(
            gw, "POST", "/v1/memory/query", {"query": "when can we deploy?", "limit": 1}
        )
        assert status == 200 and texts(found) == ["Deploys happen on Fridays after 18:00 UTC."]
        first = found["data"][0]
        assert first["id"] == "mem-1" and first["channel"] == "ops" and first["agent_id"] == "local"
        assert 0 < first["similarity"] <= first["score"]

        _, tasks = await call(gw, "POST", "/v1/memory/query", {"query": "x", "kinds": ["task"]})
        assert texts(tasks) == ["Rotate the TLS certificate before March."]
        _, newest = await call(gw, "POST", "/v1/memory/query", {"channel": "ops"})
        assert [i["id"] for i in newest["data"]] == ["mem-2", "mem-1"], "no text: newest first"

        status, one = await call(gw, "GET", "/v1/memory/items/mem-3")
        assert status == 200 and one["content"] == "Lunch is at noon."
        assert (await call(gw, "DELETE", "/v1/memory/items/mem-3"))[1] == {"deleted": 1}
        assert (await call(gw, "GET", "/v1/memory/items/mem-3"))[0] == 404

        status, refused = await call(gw, "DELETE", "/v1/memory")
        assert status == 400 and "all=true" in refused["error"]["message"]
        assert (await call(gw, "DELETE", "/v1/memory?channel=ops&kind=task"))[1] == {"deleted": 1}
        assert (await call(gw, "DELETE", "/v1/memory?all=true"))[1] == {"deleted": 1}

        status, bad = await call(gw, "POST", "/v1/memory/store", {"content": "x", "kind": "poem"})
        assert status == 400 and "kind" in bad["error"]["message"]

        async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as got:
            metrics = await got.text()
        assert 'turnout_memory_items_stored_total{kind="kb"} 2.0' in metrics
        assert "turnout_memory_search_seconds_count 2.0" in metrics


async def test_agents_only_ever_see_their_own_items(fake: FakeOpenAI, tmp_path: Path) -> None:
    database = tmp_path / "t.db"
    sofia, pm = new_key(database, "agent:sofia"), new_key(database, "agent:pm")
    config = config_of({**raw_config(fake, database), "auth": {"admin_key": ADMIN}})
    async with running_gateway(config) as gw:
        assert (await call(gw, "POST", "/v1/memory/query", {"query": "x"}))[0] == 401
        _, stored = await call(
            gw, "POST", "/v1/memory/store", {"content": "The vault code is 4711."}, key=sofia
        )
        await call(gw, "POST", "/v1/memory/store", {"content": "The pm likes tea."}, key=pm)

        _, mine = await call(gw, "POST", "/v1/memory/query", {"query": "vault code"}, key=pm)
        assert texts(mine) == ["The pm likes tea."]
        status, denied = await call(
            gw,
            "POST",
            "/v1/memory/query",
            {"query": "vault code", "agent_id": "agent:sofia"},
            key=pm,
        )
        assert status == 403 and denied["error"]["code"] == "permission_denied"
        denied_header = await call(
            gw, "POST", "/v1/memory/query", {"query": "x"}, key=pm, **{"X-Agent-Id": "agent:sofia"}
        )
        assert texts(denied_header[1]) == ["The pm likes tea."], (
            "an untrusted key's header is ignored"
        )
        item = f"/v1/memory/items/{stored['id']}"
        assert (await call(gw, "GET", item, key=pm))[0] == 404
        assert (await call(gw, "DELETE", item, key=pm))[0] == 404
        assert (await call(gw, "GET", item, key=sofia))[0] == 200

        _, everyone = await call(gw, "POST", "/v1/memory/query", {"query": "code"}, key=ADMIN)
        assert sorted(texts(everyone)) == ["The pm likes tea.", "The vault code is 4711."]
        _, hers = await call(
            gw, "POST", "/v1/memory/query", {"query": "x", "agent_id": "agent:sofia"}, key=ADMIN
        )
        assert texts(hers) == ["The vault code is 4711."]


async def test_seed_004_endpoints_map_onto_the_same_memory(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        status, stored = await call(
            gw,
            "POST",
            "/internal/agent-memory/store",
            {
                "agent_id": "agent:sofia",
                "microdao_id": "microdao:7",
                "channel_id": "chan-1",
                "kind": "conversation",
                "content": {
                    "user_message": "What changed in the DAO?",
                    "agent_reply": "The treasury moved to a 3-of-5 multisig.",
                },
            },
        )
        assert status == 200 and stored == {"ok": True, "id": "mem-1"}
        await call(
            gw,
            "POST",
            "/internal/agent-memory/store",
            {"agent_id": "agent:sofia", "kind": "dao-event", "content": "Vote 12 passed."},
        )
        status, found = await call(
            gw,
            "POST",
            "/internal/agent-memory/query",
            {
                "agent_id": "agent:sofia",
                "microdao_id": "microdao:7",
                "query": "recent changes to the treasury",
                "limit": 5,
            },
        )
        assert status == 200
        (item,) = found["items"]
        assert item["id"] == "mem-1" and item["kind"] == "conversation" and item["score"] > 0.3
        assert item["content"].startswith("User: What changed in the DAO?\nAssistant: ")
        assert item["meta"]["source"] == "channel:chan-1"
        assert item["meta"]["timestamp"].endswith("Z")
        assert item["meta"]["agent_reply"] == "The treasury moved to a 3-of-5 multisig."

        _, events = await call(
            gw,
            "POST",
            "/internal/agent-memory/query",
            {"agent_id": "agent:sofia", "query": "vote", "kind": "dao-event"},
        )
        assert [(i["kind"], i["content"]) for i in events["items"]] == [
            ("dao-event", "Vote 12 passed.")
        ]
        _, v1 = await call(
            gw, "POST", "/v1/memory/query", {"agent_id": "agent:sofia", "kinds": ["event"]}
        )
        assert texts(v1) == ["Vote 12 passed."]

        status, summary = await call(
            gw,
            "POST",
            "/internal/agent-memory/summarize",
            {"agent_id": "agent:sofia", "microdao_id": "microdao:7", "channel_id": "chan-1"},
        )
        assert status == 200 and summary["ok"] is True and summary["items"] == 1


async def test_summarize_asks_the_configured_model_and_stores_its_summary(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        lines = ["We picked Postgres for the ledger.", "Alice owns the migration.", "Ship in May."]
        for line in lines:
            await call(gw, "POST", "/v1/memory/store", {"content": line, "channel": "arch"})
        await call(gw, "POST", "/v1/memory/store", {"content": "Unrelated.", "channel": "other"})

        status, summary = await call(gw, "POST", "/v1/memory/summarize", {"channel": "arch"})
        assert status == 200 and summary["items"] == 3 and summary["model"] == "chat"
        asked = [r for r in fake.requests if r.path == "/v1/chat/completions"][-1].body
        assert asked["model"] == "ok" and "Summarise" in asked["messages"][0]["content"]
        prompt = asked["messages"][1]["content"]
        assert [p.split(") ", 1)[1] for p in prompt.split("\n")] == lines, "oldest first"
        assert "Unrelated." not in prompt
        # The fake model echoes the last user message: that is the summary it wrote.
        assert summary["summary"] == f"echo: {prompt}"

        _, stored = await call(gw, "POST", "/v1/memory/query", {"kinds": ["summary"]})
        (item,) = stored["data"]
        assert item["id"] == summary["id"] and item["channel"] == "arch"
        assert item["meta"]["summarized"] == [3, 2, 1] and item["meta"]["model"] == "chat"

        status, empty = await call(gw, "POST", "/v1/memory/summarize", {"channel": "nowhere"})
        assert status == 404 and "nothing to summarise" in empty["error"]["message"]


async def test_embeddings_can_come_from_the_gateways_own_route(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    config = config_of(raw_config(fake, tmp_path / "t.db", embeddings={"model": "embed"}))
    async with running_gateway(config) as gw:
        memory = gw.app.state.gateway.plugins.get("memory").service
        assert memory.embedder.name == "gateway:embed"
        await call(
            gw, "POST", "/v1/memory/store", {"items": [{"content": "alpha"}, {"content": "beta"}]}
        )
        embedded = [r for r in fake.requests if r.path == "/v1/embeddings"]
        assert embedded[0].body["input"] == ["alpha", "beta"] and embedded[0].body["model"] == "ok"
        _, found = await call(gw, "POST", "/v1/memory/query", {"query": "beta", "limit": 1})
        assert texts(found) == ["beta"] and found["data"][0]["similarity"] == pytest.approx(1.0)
        assert memory.backend.dims == 8, "the size the route answered with"


async def test_without_the_plugin_the_memory_api_says_how_to_turn_it_on(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    raw = raw_config(fake, tmp_path / "t.db")
    del raw["plugins"]
    async with running_gateway(config_of(raw)) as gw:
        status, answer = await call(gw, "POST", "/v1/memory/query", {"query": "x"})
    assert status == 404 and "plugins.enabled" in answer["error"]["message"]


async def test_memory_answers_right_after_start_while_its_model_loads_in_the_background(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """The local model loads off the start-up path (issue 13); the first calls wait for it."""
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        memory = gw.app.state.gateway.plugins.get("memory").service
        assert memory.backend.dims == PACKAGED_DIMS, "the store opened before the model loaded"
        status, stored = await call(
            gw, "POST", "/v1/memory/store", {"items": [{"content": "The vault opens at dawn."}]}
        )
        assert status == 200 and stored["ids"] == ["mem-1"]
        status, found = await call(gw, "POST", "/v1/memory/query", {"query": "vault", "limit": 1})
        assert status == 200 and texts(found) == ["The vault opens at dawn."]
        assert memory.embedder.dims == PACKAGED_DIMS, "what the loaded model makes"


async def test_a_model_that_fails_to_load_leaves_chat_up_and_memory_answering_503(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Loading in the background, a broken model cannot stop start-up any more: memory says
    what failed, on every call, and chat (with automatic memory on) goes on without it."""
    broken = tmp_path / "tokenizer.json"
    broken.write_text("not a tokenizer")
    raw = raw_config(
        fake, tmp_path / "t.db", embeddings={"tokenizer_file": str(broken)}, auto={"models": ["*"]}
    )
    async with running_gateway(config_of(raw)) as gw:
        for path, body in (
            ("/v1/memory/store", {"content": "x"}),
            ("/v1/memory/query", {"query": "x"}),
        ):
            status, answer = await call(gw, "POST", path, body)
            assert status == 503, answer
            assert answer["error"]["code"] == "plugin_unavailable"
            assert "failed to load" in answer["error"]["message"]
        chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        status, reply = await call(gw, "POST", "/v1/chat/completions", chat)
        assert status == 200 and reply["choices"][0]["message"]["content"]
