"""Seed 004's ``POST /internal/llm/proxy`` through a real gateway, as agent-runtime calls it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway
from tests.test_governance import new_key, wait_rows

SEED_REQUEST = {
    "model": "gpt-4.1-mini",
    "messages": [
        {"role": "system", "content": "You are Sofia."},
        {"role": "user", "content": "what changed in this microDAO?"},
    ],
    "metadata": {"agent_id": "agent:sofia", "microdao_id": "microdao:7", "channel_id": "ch-1"},
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def raw_config(fake: FakeOpenAI, database: Path, **sections: Any) -> dict[str, Any]:
    return {
        "server": {"database": str(database)},
        "providers": {"openai": {"kind": "openai-compatible", "base_url": fake.url}},
        "models": [
            {"name": "gpt-4.1-mini", "targets": [{"provider": "openai", "model": "gpt-4.1-mini"}]},
            {"name": "dagi-local-8b", "targets": [{"provider": "openai", "model": "tools"}]},
            {"name": "strict", "targets": [{"provider": "openai", "model": "error-400"}]},
        ],
        "routing": {"retries": 0},
        "usage": {"flush_interval_seconds": 0.05},
        **sections,
    }


async def call(
    gw: RunningGateway, body: Any, method: str = "POST", **headers: str
) -> tuple[int, Any]:
    payload = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gw.url + "/internal/llm/proxy", headers=headers, **payload) as r,
    ):
        return r.status, await r.json()


async def test_a_seed_004_request_gets_a_seed_004_answer_and_a_usage_row(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    async with running_gateway(config_of(raw_config(fake, database))) as gw:
        status, answer = await call(gw, SEED_REQUEST)
        rows = await wait_rows(database, 1)
    assert status == 200
    assert set(answer) == {"content", "usage", "provider", "model_resolved"}
    assert answer["content"] == "echo: what changed in this microDAO?"
    usage = answer["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert (answer["provider"], answer["model_resolved"]) == ("openai", "gpt-4.1-mini")
    sent = [r for r in fake.requests if r.method == "POST"][-1]
    assert sent.path == "/v1/chat/completions" and sent.body["messages"] == SEED_REQUEST["messages"]
    row = rows[0]
    assert (row["ingress"], row["status"], row["model"]) == ("llm_proxy", 200, "gpt-4.1-mini")
    assert (row["agent_id"], row["project"], row["channel"]) == (
        "agent:sofia",
        "microdao:7",
        "ch-1",
    )
    assert row["completion_tokens"] == usage["completion_tokens"]


async def test_provider_names_the_target_that_answered_after_a_fallback(
    fake: FakeOpenAI, fake2: FakeOpenAI, tmp_path: Path
) -> None:
    raw = raw_config(fake, tmp_path / "t.db")
    raw["providers"]["local"] = {"kind": "openai", "base_url": fake2.url, "local": True}
    raw["models"][0]["targets"].append({"provider": "local", "model": "qwen2.5-8b-instruct"})
    fake.fail_next(1, 503)
    async with running_gateway(config_of(raw)) as gw:
        status, answer = await call(gw, SEED_REQUEST)
    assert status == 200
    assert (answer["provider"], answer["model_resolved"]) == ("local", "qwen2.5-8b-instruct")


async def test_tool_calls_come_back_beside_the_content(fake: FakeOpenAI, tmp_path: Path) -> None:
    tool = {"type": "function", "function": {"name": "projects_list", "parameters": {}}}
    body = {**SEED_REQUEST, "model": "dagi-local-8b", "tools": [tool]}
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        status, answer = await call(gw, body)
    assert status == 200 and answer["content"] == ""
    assert answer["tool_calls"][0]["function"]["name"] == "projects_list"
    assert [r for r in fake.requests if r.method == "POST"][-1].body["tools"] == [tool]


async def test_errors_come_in_openais_envelope_with_the_right_status(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        unknown = await call(gw, {**SEED_REQUEST, "model": "gpt-9"})
        no_messages = await call(gw, {"model": "gpt-4.1-mini"})
        bad_role = await call(gw, {**SEED_REQUEST, "messages": [{"content": "hi"}]})
        streamed = await call(gw, {**SEED_REQUEST, "stream": True})
        refused_upstream = await call(gw, {**SEED_REQUEST, "model": "strict"})
        not_json = await call(gw, b"{")
        wrong_method = await call(gw, None, "GET")
    assert unknown[0] == 404 and "model 'gpt-9' not found" in unknown[1]["error"]["message"]
    assert no_messages[0] == 400 and no_messages[1]["error"]["param"] == "messages"
    assert bad_role[0] == 400 and bad_role[1]["error"]["param"] == "messages[0].role"
    assert streamed[0] == 400 and streamed[1]["error"]["param"] == "stream"
    assert refused_upstream[0] == 400 and refused_upstream[1]["error"]["type"]
    assert not_json[0] == 400 and "not valid JSON" in not_json[1]["error"]["message"]
    assert wrong_method[0] == 405


async def test_keys_and_model_permissions_apply(fake: FakeOpenAI, tmp_path: Path) -> None:
    database = tmp_path / "t.db"
    secret, _ = new_key(database, agent="agent:helion", allowed_models=("dagi-local-8b",))
    async with running_gateway(config_of(raw_config(fake, database))) as gw:
        anonymous = await call(gw, SEED_REQUEST)
        narrow = await call(gw, SEED_REQUEST, Authorization=f"Bearer {secret}")
    assert anonymous[0] == 401 and "missing API key" in anonymous[1]["error"]["message"]
    assert narrow[0] == 403 and "may not use model 'gpt-4.1-mini'" in narrow[1]["error"]["message"]


async def test_an_agents_prompt_layers_apply_to_its_metadata(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "sofia.md").write_text("Sofia's persona.", encoding="utf-8")
    prompts = {"layers_dir": str(tmp_path), "agents": {"agent:sofia": {"persona": "sofia.md"}}}
    raw = raw_config(fake, tmp_path / "t.db", prompts=prompts)
    async with running_gateway(config_of(raw)) as gw:
        status, _ = await call(gw, SEED_REQUEST)
    assert status == 200
    sent = [r for r in fake.requests if r.method == "POST"][-1].body["messages"]
    assert sent[0] == {"role": "system", "content": "Sofia's persona.\n\nYou are Sofia."}
