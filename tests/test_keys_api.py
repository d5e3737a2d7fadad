"""The admin API for keys and budgets on a real gateway: what `turnout keys` does, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

ADMIN = "admin-secret"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
# 1000 USD per million tokens: one short chat costs well over a micro-dollar.
PRICES = {"chat": {"input": 1000.0, "output": 1000.0}}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def raw_config(fake: FakeOpenAI, database: Path) -> dict[str, Any]:
    return {
        "server": {"database": str(database)},
        "auth": {"admin_key": ADMIN},
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
        "routing": {"retries": 0},
        "prices": PRICES,
    }


async def admin(
    gw: RunningGateway, method: str, path: str, body: Any = None, key: str | None = ADMIN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gw.url + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_a_key_created_over_the_api_works_at_once_and_stops_when_revoked(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        status, created = await admin(
            gw, "POST", "/v1/keys", {"agent": "ci-bot", "models": ["chat"], "rpm": 60}
        )
        assert status == 201, created
        assert created["key"].startswith("sk-turnout-")
        assert (created["name"], created["agent_id"], created["rpm"]) == ("ci-bot", "ci-bot", 60)
        reply = await gw.openai(api_key=created["key"]).chat.completions.create(
            model="chat", messages=USER
        )
        assert reply.choices[0].message.content == "echo: ping"

        status, listed = await admin(gw, "GET", "/v1/keys")
        assert status == 200
        assert [k["id"] for k in listed["data"]] == [created["id"]]
        assert "key" not in listed["data"][0], "the secret is shown once, at creation"

        status, revoked = await admin(gw, "DELETE", f"/v1/keys/{created['id']}")
        assert (status, revoked) == (200, {"id": created["id"], "revoked": True})
        with pytest.raises(openai.AuthenticationError):
            await gw.openai(api_key=created["key"]).chat.completions.create(
                model="chat", messages=USER
            )
        status, again = await admin(gw, "DELETE", f"/v1/keys/{created['id']}")
        assert status == 404 and again["error"]["param"] == "id"
        status, everything = await admin(gw, "GET", "/v1/keys?all=true")
        assert [k["revoked"] for k in everything["data"]] == [True]


async def test_the_api_needs_the_admin_key(fake: FakeOpenAI, tmp_path: Path) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        status, body = await admin(gw, "GET", "/v1/keys", key=None)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        _, created = await admin(gw, "POST", "/v1/keys", {"agent": "a"})
        for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("GET", "/v1/budgets")):
            status, body = await admin(gw, method, path, {"agent": "b"}, key=created["key"])
            assert status == 403, (method, path, body)
        status, _ = await admin(gw, "PUT", "/v1/budgets/dao-1", {"budget": 1}, key="wrong")
        assert status == 403


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "agent"),
        ({"agent": ""}, "agent"),
        ({"agent": "a", "rpm": -1}, "rpm"),
        ({"agent": "a", "tpm": "many"}, "tpm"),
        ({"agent": "a", "budget": -5}, "budget"),
        ({"agent": "a", "budget": 5, "budget_period": "hourly"}, "budget_period"),
        ({"agent": "a", "budget_period": "daily"}, "budget_period"),
        ({"agent": "a", "models": ["ok", ""]}, "models[1]"),
        ({"agent": "a", "colour": "red"}, "colour"),
    ],
)
async def test_every_bad_field_is_a_400_naming_it(
    fake: FakeOpenAI, tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        status, answer = await admin(gw, "POST", "/v1/keys", body)
        assert status == 400, answer
        assert answer["error"]["param"] == param, answer
        assert answer["error"]["type"] == "invalid_request_error"
        status, answer = await admin(gw, "PUT", "/v1/budgets/dao-1", {"budget": "x"})
        assert (status, answer["error"]["param"]) == (400, "budget")


async def test_bad_query_and_path_values_are_400s_naming_them(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        status, answer = await admin(gw, "GET", "/v1/keys?all=maybe")
        assert (status, answer["error"]["param"]) == (400, "all"), answer
        status, answer = await admin(gw, "PUT", "/v1/budgets/" + "p" * 129, {"budget": 1})
        assert (status, answer["error"]["param"]) == (400, "project"), answer


async def test_a_daily_key_budget_refuses_once_spent_and_shows_its_spend(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        _, created = await admin(
            gw, "POST", "/v1/keys", {"agent": "a", "budget": 0.000001, "budget_period": "daily"}
        )
        client = gw.openai(api_key=created["key"])
        await client.chat.completions.create(model="chat", messages=USER)
        with pytest.raises(openai.RateLimitError, match="budget for this day") as caught:
            await client.chat.completions.create(model="chat", messages=USER)
        assert caught.value.code == "insufficient_quota"
        _, listed = await admin(gw, "GET", "/v1/keys")
        row = listed["data"][0]
        assert row["budget_period"] == "daily" and row["spent_usd"] > row["budget_usd"]


async def test_a_project_budget_is_charged_beside_the_key(fake: FakeOpenAI, tmp_path: Path) -> None:
    async with running_gateway(config_of(raw_config(fake, tmp_path / "t.db"))) as gw:
        status, budget = await admin(
            gw, "PUT", "/v1/budgets/dao-7", {"budget": 0.000001, "budget_period": "monthly"}
        )
        assert status == 200 and budget["project"] == "dao-7", budget
        _, created = await admin(gw, "POST", "/v1/keys", {"agent": "a"})
        client = gw.openai(api_key=created["key"])
        dao = {"microdao_id": "dao-7"}
        await client.chat.completions.create(model="chat", messages=USER, metadata=dao)
        with pytest.raises(openai.RateLimitError, match="project 'dao-7'"):
            await client.chat.completions.create(model="chat", messages=USER, metadata=dao)
        # Another project, and no project, are not held back by dao-7's budget.
        await client.chat.completions.create(
            model="chat", messages=USER, metadata={"microdao_id": "dao-8"}
        )
        await client.chat.completions.create(model="chat", messages=USER)
        _, listed = await admin(gw, "GET", "/v1/budgets")
        [row] = listed["data"]
        assert row["spent_usd"] > row["budget_usd"] and row["remaining_usd"] < 0

        status, _ = await admin(gw, "DELETE", "/v1/budgets/dao-7")
        assert status == 200
        await client.chat.completions.create(model="chat", messages=USER, metadata=dao)
        status, answer = await admin(gw, "DELETE", "/v1/budgets/dao-7")
        assert (status, answer["error"]["param"]) == (404, "project")
