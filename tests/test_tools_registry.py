"""The registry: OpenAI-safe names, lookups, permissions, executor kinds, schemas checked on add."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.plugins.tools.registry import (
    FUNCTION_NAME,
    Caller,
    ToolRegistry,
    ToolSpec,
    function_name,
    may_call,
)
from gateway.plugins.tools.settings import ToolDefinition


class Fixed:
    def __init__(self, spec: ToolSpec, answer: Any = "ok") -> None:
        self._spec = spec
        self.answer = answer

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, arguments: dict[str, Any], caller: Caller) -> Any:
        return self.answer


def spec(tool_id: str, **extra: Any) -> ToolSpec:
    return ToolSpec(
        id=tool_id, description="d", input_schema={"type": "object"}, executor="t", **extra
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("get_weather", "get_weather"),
        ("projects.list", "projects_list"),
        ("files.read/v2", "files_read_v2"),
        ("погода", "______"),
        ("", "tool"),
    ],
)
def test_function_names_keep_to_openais_charset(name: str, expected: str) -> None:
    assert function_name(name) == expected
    assert FUNCTION_NAME.match(function_name(name))


def test_long_names_are_cut_with_a_stable_hash() -> None:
    name = "server_" + "very_long_tool_name_" * 5
    cut = function_name(name)
    assert len(cut) == 64 and FUNCTION_NAME.match(cut)
    assert cut == function_name(name)
    assert cut != function_name(name + "x")


def test_a_name_taken_once_cleaned_gets_a_hash() -> None:
    assert function_name("a.b", taken={"a_b"}).startswith("a_b_")
    assert function_name("a.b", taken={"a_b"}) != function_name("a-b", taken={"a_b"})


def test_tools_are_found_by_id_and_by_function_name() -> None:
    registry = ToolRegistry()
    entry = registry.add(Fixed(spec("projects.list")))
    assert entry.function == "projects_list"
    assert registry.get("projects.list") is entry
    assert registry.get("projects_list") is entry
    assert registry.by_function("projects_list") is entry
    assert registry.by_function("projects.list") is None
    registry.remove("projects.list")
    assert registry.get("projects_list") is None and len(registry) == 0


def test_ids_are_unique_and_function_names_never_collide() -> None:
    registry = ToolRegistry()
    first = registry.add(Fixed(spec("a.b")))
    second = registry.add(Fixed(spec("a_b")))
    assert first.function == "a_b" and second.function != "a_b"
    assert registry.by_function(second.function) is second
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Fixed(spec("a.b")))


def test_an_invalid_schema_is_refused_when_the_tool_is_added() -> None:
    registry = ToolRegistry()
    bad = ToolSpec(id="bad", description="", input_schema={"type": "objekt"}, executor="t")
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        registry.add(Fixed(bad))
    assert len(registry) == 0


def test_the_openai_definition_is_prepared_once() -> None:
    import json

    entry = ToolRegistry().add(Fixed(spec("projects.list")))
    assert json.loads(entry.openai) == {
        "type": "function",
        "function": {"name": "projects_list", "description": "d", "parameters": {"type": "object"}},
    }


def test_permissions_by_agent_and_glob() -> None:
    open_tool = spec("open")
    closed = spec("closed", allowed_agents=("agent:sofia", "team-*"))
    assert may_call(open_tool, "anyone")
    assert may_call(closed, "agent:sofia") and may_call(closed, "team-blue")
    assert not may_call(closed, "agent:pm")
    assert may_call(closed, "agent:pm", is_admin=True)
    registry = ToolRegistry()
    registry.add(Fixed(open_tool))
    registry.add(Fixed(closed))
    assert [e.spec.id for e in registry.visible_to("agent:pm")] == ["open"]
    assert {e.spec.id for e in registry.visible_to("team-red")} == {"open", "closed"}


def test_executor_kinds_are_looked_up_by_name() -> None:
    registry = ToolRegistry()
    registry.register_kind("fixed", lambda d: Fixed(ToolSpec.from_definition(d)))
    tool = registry.build(ToolDefinition(id="x", executor="fixed", target="-", name="X"))
    assert tool.spec.title == "X" and tool.spec.executor == "fixed"
    with pytest.raises(ValueError, match="unknown executor 'nope' \\(known: fixed\\)"):
        registry.build(ToolDefinition(id="y", executor="nope", target="-"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register_kind("fixed", lambda d: Fixed(ToolSpec.from_definition(d)))


async def test_services_start_in_order_and_close_in_reverse() -> None:
    events: list[str] = []

    class Service:
        def __init__(self, name: str) -> None:
            self.name = name

        async def start(self) -> None:
            events.append("start " + self.name)

        async def close(self) -> None:
            events.append("close " + self.name)

    registry = ToolRegistry()
    registry.add_service(Service("a"))
    registry.add_service(Service("b"))
    await registry.start()
    await registry.close()
    assert events == ["start a", "start b", "close b", "close a"]
