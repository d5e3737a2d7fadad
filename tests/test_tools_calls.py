"""One tool call: refusals before the tool runs, failures reported as outcomes, never raised."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.errors import ToolFailed
from gateway.plugins.tools.calls import call_tool
from gateway.plugins.tools.registry import Caller, ToolRegistry, ToolSpec

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1}, "days": {"type": "integer"}},
    "required": ["city"],
    "additionalProperties": False,
}
SOFIA = Caller("agent:sofia", request_id="r1")


class Scripted:
    def __init__(self, spec: ToolSpec, behaviour: Any) -> None:
        self._spec = spec
        self.behaviour = behaviour
        self.calls: list[dict[str, Any]] = []

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, arguments: dict[str, Any], caller: Caller) -> Any:
        self.calls.append(arguments)
        return await self.behaviour(arguments)


async def answer(arguments: dict[str, Any]) -> Any:
    return {"city": arguments["city"], "temperature_c": 21}


def registry_with(behaviour: Any = answer, **spec: Any) -> tuple[ToolRegistry, Scripted]:
    registry = ToolRegistry()
    fields: dict[str, Any] = {
        "id": "weather.get",
        "description": "Weather",
        "input_schema": WEATHER_SCHEMA,
        "executor": "test",
        "timeout": 1.0,
        **spec,
    }
    tool = Scripted(ToolSpec(**fields), behaviour)
    registry.add(tool)
    return registry, tool


async def test_a_valid_call_returns_the_result() -> None:
    registry, tool = registry_with()
    outcome = await call_tool(registry, "weather.get", {"city": "Paris"}, SOFIA)
    assert outcome.ok and outcome.result == {"city": "Paris", "temperature_c": 21}
    assert outcome.error is None and outcome.code is None
    assert (await call_tool(registry, "weather_get", {"city": "Oslo"}, SOFIA)).ok
    assert tool.calls == [{"city": "Paris"}, {"city": "Oslo"}]


async def test_an_unknown_tool_is_not_found() -> None:
    registry, _ = registry_with()
    outcome = await call_tool(registry, "nope", {}, SOFIA)
    assert not outcome.ok and outcome.code == "not_found" and "nope" in (outcome.error or "")


async def test_a_denied_agent_never_reaches_the_tool() -> None:
    registry, tool = registry_with(allowed_agents=("agent:pm",))
    outcome = await call_tool(registry, "weather.get", {"city": "Paris"}, SOFIA)
    assert outcome.code == "permission_denied"
    assert "agent:sofia" in (outcome.error or "") and tool.calls == []
    admin = Caller("admin", is_admin=True)
    assert (await call_tool(registry, "weather.get", {"city": "Paris"}, admin)).ok


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "$: 'city' is a required property"),
        ({"city": 7}, "$.city: 7 is not of type 'string'"),
        ({"city": ""}, "$.city: '' should be non-empty"),
        ({"city": "Paris", "days": "two"}, "$.days: 'two' is not of type 'integer'"),
        ({"city": "Paris", "extra": 1}, "Additional properties are not allowed"),
        (["Paris"], "arguments must be a JSON object"),
    ],
)
async def test_schema_violations_are_refused_before_the_tool_runs(
    arguments: Any, problem: str
) -> None:
    registry, tool = registry_with()
    outcome = await call_tool(registry, "weather.get", arguments, SOFIA)
    assert outcome.code == "invalid_arguments" and problem in (outcome.error or "")
    assert tool.calls == []


async def test_a_slow_tool_times_out() -> None:
    async def hang(arguments: dict[str, Any]) -> Any:
        await asyncio.sleep(10)

    registry, _ = registry_with(hang, timeout=0.05)
    outcome = await call_tool(registry, "weather.get", {"city": "Paris"}, SOFIA)
    assert outcome.code == "timeout" and "0.05s" in (outcome.error or "")
    assert 0.04 < outcome.seconds < 1


async def test_failures_are_outcomes_not_exceptions() -> None:
    async def refuses(arguments: dict[str, Any]) -> Any:
        raise ToolFailed("no such city")

    async def crashes(arguments: dict[str, Any]) -> Any:
        raise KeyError("temperature")

    async def garbage(arguments: dict[str, Any]) -> Any:
        return object()

    registry, _ = registry_with(refuses)
    outcome = await call_tool(registry, "weather.get", {"city": "Atlantis"}, SOFIA)
    assert (outcome.code, outcome.error) == ("tool_error", "no such city")
    registry, _ = registry_with(crashes)
    outcome = await call_tool(registry, "weather.get", {"city": "Paris"}, SOFIA)
    assert outcome.code == "tool_error" and "KeyError" in (outcome.error or "")
    registry, _ = registry_with(garbage)
    outcome = await call_tool(registry, "weather.get", {"city": "Paris"}, SOFIA)
    assert outcome.code == "invalid_output" and "not JSON" in (outcome.error or "")


async def test_results_are_checked_against_the_output_schema() -> None:
    output = {"type": "object", "properties": {"temperature_c": {"type": "number"}}}
    registry, _ = registry_with(output_schema=output)
    assert (await call_tool(registry, "weather.get", {"city": "Paris"}, SOFIA)).ok

    async def wrong(arguments: dict[str, Any]) -> Any:
        return {"temperature_c": "warm"}

    registry, _ = registry_with(wrong, output_schema=output)
    outcome = await call_tool(registry, "weather.get", {"city": "Paris"}, SOFIA)
    assert outcome.code == "invalid_output" and "$.temperature_c" in (outcome.error or "")
