"""Which tools turnout runs for a request (pure): name-only references, routes, permissions."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from gateway.errors import BadRequest, Forbidden
from gateway.identity import Identity
from gateway.plugins.tools.plan import plan_agent
from gateway.plugins.tools.registry import Caller, ToolRegistry, ToolSpec
from gateway.plugins.tools.settings import AgentLoop

SOFIA = Identity(key_id=None, agent_id="agent:sofia")
READ_FILE = {
    "type": "function",
    "function": {"name": "read_file", "parameters": {"type": "object"}},
}


class Idle:
    def __init__(self, spec: ToolSpec) -> None:
        self._spec = spec

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, arguments: dict[str, Any], caller: Caller) -> Any:
        return None


def registry() -> ToolRegistry:
    tools = ToolRegistry()
    for tool_id, agents in (
        ("get_weather", None),
        ("projects.list", ("agent:pm",)),
        ("read_file", None),
    ):
        tools.add(Idle(ToolSpec(tool_id, "", {"type": "object"}, "t", allowed_agents=agents)))
    return tools


def fields(**body: Any) -> dict[str, msgspec.Raw]:
    return {k: msgspec.Raw(json.dumps(v).encode()) for k, v in body.items()}


def ref(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def test_no_tools_no_plan() -> None:
    assert plan_agent(registry(), AgentLoop(), "chat", fields(messages=[]), SOFIA) is None
    assert plan_agent(ToolRegistry(), AgentLoop(), "chat", fields(tools=[ref("x")]), SOFIA) is None


def test_a_name_only_reference_to_a_registered_tool_is_run_by_turnout() -> None:
    plan = plan_agent(registry(), AgentLoop(), "chat", fields(tools=[ref("get_weather")]), SOFIA)
    assert plan is not None
    assert list(plan.server) == ["get_weather"] and plan.client == ()
    assert plan.max_rounds == 4 and not plan.debug


def test_client_definitions_stay_the_clients_even_when_the_name_is_registered() -> None:
    listed = [READ_FILE, ref("get_weather"), ref("unknown_tool")]
    plan = plan_agent(registry(), AgentLoop(), "chat", fields(tools=listed), SOFIA)
    assert plan is not None
    assert list(plan.server) == ["get_weather"]
    assert [json.loads(bytes(raw)) for raw in plan.client] == [READ_FILE, ref("unknown_tool")]


def test_only_client_tools_means_no_plan() -> None:
    assert plan_agent(registry(), AgentLoop(), "chat", fields(tools=[READ_FILE]), SOFIA) is None


def test_requesting_a_tool_the_agent_may_not_use_is_refused() -> None:
    with pytest.raises(Forbidden, match=r"may not use tool 'projects\.list'"):
        plan_agent(registry(), AgentLoop(), "chat", fields(tools=[ref("projects.list")]), SOFIA)
    pm = Identity(key_id=None, agent_id="agent:pm")
    plan = plan_agent(registry(), AgentLoop(), "chat", fields(tools=[ref("projects_list")]), pm)
    assert plan is not None and list(plan.server) == ["projects_list"]


def test_route_tools_apply_to_every_request_of_the_model_the_agent_may_use() -> None:
    settings = AgentLoop(routes={"research": ("get_weather", "projects.list", "not.there")})
    plan = plan_agent(registry(), settings, "research", fields(messages=[]), SOFIA)
    assert plan is not None and list(plan.server) == ["get_weather"]
    assert plan_agent(registry(), settings, "chat", fields(messages=[]), SOFIA) is None
    client_owned = fields(
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    )
    assert plan_agent(registry(), settings, "research", client_owned, SOFIA) is None


def test_the_request_can_ask_for_fewer_rounds_and_a_trace_but_not_more_rounds() -> None:
    body = fields(tools=[ref("get_weather")], turnout={"debug": True, "max_tool_rounds": 1})
    plan = plan_agent(registry(), AgentLoop(), "chat", body, SOFIA)
    assert plan is not None and plan.debug and plan.max_rounds == 1
    body = fields(tools=[ref("get_weather")], turnout={"max_tool_rounds": 99})
    plan = plan_agent(registry(), AgentLoop(max_tool_rounds=3), "chat", body, SOFIA)
    assert plan is not None and plan.max_rounds == 3
    with pytest.raises(BadRequest, match="turnout"):
        plan_agent(
            registry(),
            AgentLoop(),
            "chat",
            fields(tools=[ref("get_weather")], turnout={"x": 1}),
            SOFIA,
        )
