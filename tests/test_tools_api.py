"""/v1/tools and seed 004's /internal/tools through a real gateway, per agent.

The tools plugin is enabled as any plugin is (``plugins.enabled: [tools]``, found through its
entry point); callers are told apart by virtual keys in the gateway's database, or by
X-Agent-Id from a local caller in embedded mode.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.keys import connect, create_key
from tests.gateway_server import RunningGateway, config_of, running_gateway
from tests.tools_fixtures.http_tool_server import HttpToolServer

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = "tests.tools_fixtures.functions"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
ADMIN_KEY = "sk-admin-test"


def tools_section(http: HttpToolServer) -> dict[str, Any]:
    return {
        "registry": [
            {
                "id": "weather.get",
                "name": "Weather",
                "description": "Current weather for a city.",
                "executor": "python",
                "target": f"{FUNCTIONS}:get_weather",
                "input_schema": CITY,
            },
            {
                "id": "whoami",
                "executor": "python",
                "target": f"{FUNCTIONS}:whoami",
                "allowed_agents": ["agent:sofia"],
            },
            {
                "id": "projects.list",
                "executor": "http",
                "target": http.url("/weather"),
                "input_schema": CITY,
                "allowed_agents": ["agent:pm", "agent:cto"],
            },
            {"id": "broken", "executor": "python", "target": f"{FUNCTIONS}:broken"},
        ],
        "http": {"allow": ["127.0.0.1"]},
        "mcp_servers": {
            "fx": {
                "command": [sys.executable, "-m", "tests.tools_fixtures.mcp_server"],
                "cwd": str(ROOT),
                "include": ["add"],
                "allowed_agents": ["agent:sofia"],
            }
        },
    }


def raw_config(http: HttpToolServer, database: Path, **sections: Any) -> dict[str, Any]:
    return {
        "server": {"database": str(database)},
        "plugins": {"enabled": ["tools"]},
        "tools": tools_section(http),
        **sections,
    }


def new_key(database: Path, agent: str, **options: Any) -> str:
    connection = connect(str(database))
    secret, _ = create_key(connection, agent, agent, **options)
    connection.close()
    return secret


@pytest.fixture
async def http() -> AsyncIterator[HttpToolServer]:
    async with HttpToolServer() as server:
        yield server


async def get(gw: RunningGateway, path: str, key: str | None, **headers: str) -> tuple[int, Any]:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as session, session.get(gw.url + path, headers=headers) as r:
        return r.status, await r.json()


async def post(
    gw: RunningGateway, path: str, key: str | None, body: Any, **headers: str
) -> tuple[int, Any]:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + path, json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


def ids(listing: Any) -> set[str]:
    items = listing["data"] if isinstance(listing, dict) else listing
    return {item["id"] for item in items}


async def test_each_agent_lists_only_the_tools_it_may_use(
    http: HttpToolServer, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    sofia, pm = new_key(database, "agent:sofia"), new_key(database, "agent:pm")
    config = config_of(raw_config(http, database, auth={"admin_key": ADMIN_KEY}))
    async with running_gateway(config) as gw:
        status, listing = await get(gw, "/v1/tools", sofia)
        assert status == 200 and listing["object"] == "list"
        assert ids(listing) == {"weather.get", "whoami", "broken", "fx_add"}
        weather = next(t for t in listing["data"] if t["id"] == "weather.get")
        assert weather["function"] == {"name": "weather_get"}
        assert weather["name"] == "Weather" and weather["input_schema"] == CITY
        assert "target" not in weather
        _, listing = await get(gw, "/v1/tools", pm)
        assert ids(listing) == {"weather.get", "projects.list", "broken"}
        _, listing = await get(gw, "/v1/tools", ADMIN_KEY)
        assert "fx_add" in ids(listing) and "projects.list" in ids(listing)
        projects = next(t for t in listing["data"] if t["id"] == "projects.list")
        assert projects["target"] == http.url("/weather")
        status, body = await get(gw, "/v1/tools", None)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"


async def test_calls_answer_ok_result_error_with_refusals_as_http_statuses(
    http: HttpToolServer, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    sofia, pm = new_key(database, "agent:sofia"), new_key(database, "agent:pm")
    async with running_gateway(config_of(raw_config(http, database))) as gw:
        status, body = await post(
            gw, "/v1/tools/call", sofia, {"tool": "weather.get", "arguments": {"city": "Paris"}}
        )
        assert status == 200 and body["ok"] is True and body["error"] is None
        assert body["result"]["city"] == "Paris"
        status, body = await post(
            gw, "/v1/tools/call", sofia, {"tool": "weather_get", "arguments": '{"city":"Oslo"}'}
        )
        assert status == 200 and body["result"]["city"] == "Oslo"
        status, body = await post(
            gw, "/v1/tools/call", pm, {"tool": "projects.list", "arguments": {"city": "Rome"}}
        )
        assert body == {
            "ok": True,
            "result": {"city": "Rome", "temperature_c": 21},
            "error": None,
            "code": None,
        }
        assert http.requests[0]["body"]["agent_id"] == "agent:pm"

        status, body = await post(
            gw, "/v1/tools/call", sofia, {"tool": "projects.list", "arguments": {"city": "Rome"}}
        )
        assert (status, body["ok"], body["code"]) == (403, False, "permission_denied")
        assert len(http.requests) == 1
        status, body = await post(
            gw, "/v1/tools/call", sofia, {"tool": "weather.get", "arguments": {"town": "Paris"}}
        )
        assert (status, body["code"]) == (400, "invalid_arguments")
        assert "'city' is a required property" in body["error"]
        status, body = await post(gw, "/v1/tools/call", sofia, {"tool": "nope"})
        assert (status, body["code"]) == (404, "not_found")
        status, body = await post(gw, "/v1/tools/call", sofia, {"tool": "broken"})
        assert (status, body["ok"], body["code"]) == (200, False, "tool_error")
        status, body = await post(gw, "/v1/tools/call", sofia, {"arguments": {}})
        assert status == 400


async def test_mcp_tools_are_called_through_the_api(http: HttpToolServer, tmp_path: Path) -> None:
    database = tmp_path / "t.db"
    sofia, pm = new_key(database, "agent:sofia"), new_key(database, "agent:pm")
    async with running_gateway(config_of(raw_config(http, database))) as gw:
        status, body = await post(
            gw, "/v1/tools/call", sofia, {"tool": "fx_add", "arguments": {"a": 40, "b": 2}}
        )
        assert status == 200 and body["result"] == {"result": 42}
        status, body = await post(
            gw, "/v1/tools/call", pm, {"tool": "fx_add", "arguments": {"a": 40, "b": 2}}
        )
        assert status == 403


async def test_seed_004_internal_endpoints(http: HttpToolServer, tmp_path: Path) -> None:
    database = tmp_path / "t.db"
    sofia, pm = new_key(database, "agent:sofia"), new_key(database, "agent:pm")
    runtime = new_key(database, "agent-runtime", trusted=True)
    async with running_gateway(config_of(raw_config(http, database))) as gw:
        status, listing = await get(gw, "/internal/tools", pm)
        assert status == 200 and isinstance(listing, list)
        assert ids(listing) == {"weather.get", "projects.list", "broken"}
        projects = next(t for t in listing if t["id"] == "projects.list")
        assert projects["executor"] == "http"
        assert projects["allowed_agents"] == ["agent:pm", "agent:cto"]

        call = {
            "tool_id": "projects.list",
            "agent_id": "agent:pm",
            "microdao_id": "microdao:7",
            "args": {"city": "Kyiv"},
            "context": {"channel": "c-1", "request_id": "from-the-caller"},
        }
        status, body = await post(gw, "/internal/tools/call", pm, call)
        assert status == 200 and body["ok"] and body["result"]["city"] == "Kyiv"
        sent = http.requests[-1]["body"]
        assert (sent["agent_id"], sent["microdao_id"]) == ("agent:pm", "microdao:7")
        assert sent["context"]["channel"] == "c-1"

        # An ordinary key cannot act for another agent; a trusted one acts with its permissions.
        status, body = await post(gw, "/internal/tools/call", sofia, call)
        assert status == 403 and "acts for agent 'agent:sofia'" in body["error"]["message"]
        status, body = await post(gw, "/internal/tools/call", runtime, call)
        assert status == 200 and body["ok"]
        status, body = await post(
            gw, "/internal/tools/call", runtime, {**call, "agent_id": "agent:x"}
        )
        assert (status, body["code"]) == (403, "permission_denied")


async def test_embedded_mode_takes_the_agent_from_x_agent_id(
    http: HttpToolServer, tmp_path: Path
) -> None:
    async with running_gateway(config_of(raw_config(http, tmp_path / "t.db"))) as gw:
        status, listing = await get(gw, "/v1/tools", None, **{"X-Agent-Id": "agent:pm"})
        assert status == 200 and "projects.list" in ids(listing) and "whoami" not in ids(listing)
        status, body = await post(
            gw,
            "/v1/tools/call",
            None,
            {"tool": "whoami"},
            **{"X-Agent-Id": "agent:sofia", "X-Request-Id": "req-42"},
        )
        assert status == 200
        assert body["result"] == {"agent_id": "agent:sofia", "request_id": "req-42"}
        _, listing = await get(gw, "/v1/tools", None)
        assert "whoami" not in ids(listing), "a local caller without a name is agent 'local'"
