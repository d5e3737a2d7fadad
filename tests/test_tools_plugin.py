"""The tools plugin as the gateway loads it: its config section, start-up errors, its metrics."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from adapters.builtin import default_registry
from gateway.errors import ConfigError, PluginError
from gateway.state import GatewayState, Wiring
from tests.gateway_server import config_of, running_gateway

FUNCTIONS = "tests.tools_fixtures.functions"


def raw(tools: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {"plugins": {"enabled": ["tools"]}, "tools": tools, **sections}


def tool(**fields: Any) -> dict[str, Any]:
    return {"id": "t", "executor": "python", "target": f"{FUNCTIONS}:add", **fields}


@pytest.mark.parametrize(
    ("tools", "problem"),
    [
        ({"registry": [tool(), tool()]}, "tools.registry[1].id: 't' is defined twice"),
        ({"registry": [tool(timeout_seconds=0)]}, "tools.registry[0].timeout_seconds"),
        ({"registry": [{"id": "t", "executor": "python"}]}, "missing required field `target`"),
        ({"mcp_servers": {"fs": {}}}, "tools.mcp_servers.fs: expected either command"),
        (
            {"mcp_servers": {"fs": {"command": ["x"], "url": "http://h/mcp"}}},
            "tools.mcp_servers.fs: expected either command",
        ),
        ({"mcp_servers": {"fs": {"url": "ftp://h"}}}, "tools.mcp_servers.fs.url"),
        ({"agent": {"routes": {"nope": ["t"]}}}, "tools.agent.routes.nope: unknown model"),
        ({"agent": {"final_instruction_role": "tool"}}, "tools.agent.final_instruction_role"),
        ({"registry": [tool(colour="red")]}, "unknown key `colour`"),
    ],
)
def test_config_errors_name_the_key_path(tools: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_of(raw(tools))
    assert problem in str(caught.value)


def wiring_for(tools: dict[str, Any]) -> Wiring:
    return Wiring.of(config_of(raw(tools)), default_registry())


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        (tool(input_schema={"type": "objekt"}), "not a valid JSON Schema"),
        (tool(executor="shell"), "unknown executor 'shell' (known: http, mcp, python)"),
        (tool(target="tests.tools_fixtures.functions:nope"), "has no attribute 'nope'"),
        (tool(executor="http", target="ftp://x"), "expected an http(s) URL"),
        (tool(executor="mcp", target="fs/read"), "naming one of tools.mcp_servers"),
    ],
)
async def test_a_tool_that_cannot_be_built_stops_start_up_naming_it(
    definition: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PluginError) as caught:
        await GatewayState.open(wiring_for({"registry": [definition]}))
    assert "tools.registry[0] (t)" in str(caught.value) and problem in str(caught.value)


async def test_calls_and_mcp_servers_show_in_the_gateways_metrics() -> None:
    tools = {
        "registry": [tool(id="add", input_schema={"type": "object"})],
        "mcp_servers": {"gone": {"url": "http://127.0.0.1:9/mcp", "connect_timeout_seconds": 0.5}},
    }
    async with running_gateway(config_of(raw(tools))) as gw, aiohttp.ClientSession() as session:
        body = {"tool": "add", "arguments": {"a": 1, "b": 2}}
        async with session.post(gw.url + "/v1/tools/call", json=body) as response:
            assert (await response.json())["result"] == 3
        async with session.post(gw.url + "/v1/tools/call", json={"tool": "x"}) as response:
            assert response.status == 404
        async with session.get(gw.url + "/metrics") as response:
            metrics = await response.text()
    assert 'turnout_tool_calls_total{outcome="ok",tool="add"} 1.0' in metrics
    assert 'turnout_tool_calls_total{outcome="not_found",tool="(unknown)"} 1.0' in metrics
    assert 'turnout_tool_call_duration_seconds_count{executor="python"} 1.0' in metrics
    assert 'turnout_mcp_server_up{server="gone"} 0.0' in metrics
