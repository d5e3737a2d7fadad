"""The python executor: import paths resolved at registration, sync functions off the loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest

from gateway.plugins.tools.calls import call_tool
from gateway.plugins.tools.python import ToolThreads, load_function, python_tool
from gateway.plugins.tools.registry import Caller, ToolRegistry
from gateway.plugins.tools.settings import ToolDefinition

FUNCTIONS = "tests.tools_fixtures.functions"
SOFIA = Caller("agent:sofia", request_id="req-7")


def registry(*definitions: ToolDefinition) -> ToolRegistry:
    tools = ToolRegistry()
    for definition in definitions:
        tools.add(python_tool(definition))
    return tools


def tool(tool_id: str, function: str, **extra: object) -> ToolDefinition:
    definition = ToolDefinition(id=tool_id, executor="python", target=f"{FUNCTIONS}:{function}")
    return msgspec.structs.replace(definition, **extra)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("nowhere.at_all:f", "cannot import 'nowhere.at_all'"),
        (f"{FUNCTIONS}:missing", "has no attribute 'missing'"),
        (f"{FUNCTIONS}:NOT_CALLABLE", "is not callable"),
        ("justaname", "expected an import path"),
    ],
)
def test_a_wrong_import_path_fails_at_registration(path: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        load_function(path)


def test_dotted_paths_work_too() -> None:
    assert load_function(f"{FUNCTIONS}.get_weather") is load_function(f"{FUNCTIONS}:get_weather")


async def test_plain_functions_run_in_a_worker_thread() -> None:
    tools = registry(tool("weather", "get_weather"))
    outcome = await call_tool(tools, "weather", {"city": "Paris"}, SOFIA)
    assert outcome.ok
    assert outcome.result["city"] == "Paris"
    assert outcome.result["thread"] != threading.current_thread().name


async def test_coroutine_functions_run_on_the_loop() -> None:
    tools = registry(tool("add", "add"))
    outcome = await call_tool(tools, "add", {"a": 2, "b": 3}, SOFIA)
    assert outcome.ok and outcome.result == 5


async def test_the_caller_is_passed_when_asked_for_and_cannot_be_spoofed() -> None:
    tools = registry(tool("whoami", "whoami"))
    outcome = await call_tool(tools, "whoami", {"caller": "agent:admin"}, SOFIA)
    assert outcome.result == {"agent_id": "agent:sofia", "request_id": "req-7"}


async def test_failures_and_timeouts() -> None:
    tools = registry(
        tool("broken", "broken"),
        tool("slow", "slow_async", timeout_seconds=0.05),
        tool("odd", "not_json"),
        tool(
            "shaped",
            "wrong_shape",
            output_schema={"properties": {"temperature_c": {"type": "number"}}},
        ),
    )
    broken = await call_tool(tools, "broken", {}, SOFIA)
    assert broken.code == "tool_error" and "RuntimeError: the tool is broken" in (
        broken.error or ""
    )
    slow = await call_tool(tools, "slow", {"seconds": 5}, SOFIA)
    assert slow.code == "timeout"
    odd = await call_tool(tools, "odd", {}, SOFIA)
    assert odd.code == "invalid_output"
    shaped = await call_tool(tools, "shaped", {}, SOFIA)
    assert shaped.code == "invalid_output"


async def test_a_full_tool_pool_refuses_calls_until_a_stuck_tool_returns() -> None:
    threads = ToolThreads(2)
    tools = ToolRegistry()
    tools.add(python_tool(tool("slow", "slow", timeout_seconds=0.05), threads))
    tools.add(python_tool(tool("weather", "get_weather"), threads))
    for _ in range(2):
        stuck = await call_tool(tools, "slow", {"seconds": 0.6}, SOFIA)
        assert stuck.code == "timeout"
    assert threads.running == 2  # both still sleeping past their timeout
    refused = await call_tool(tools, "weather", {"city": "Oslo"}, SOFIA)
    assert refused.code == "tool_error"
    assert "all 2 python tool threads are busy" in (refused.error or "")
    for _ in range(100):
        if threads.running == 0:
            break
        await asyncio.sleep(0.05)
    assert threads.running == 0
    again = await call_tool(tools, "weather", {"city": "Oslo"}, SOFIA)
    assert again.ok and again.result["thread"] == "turnout-tool"


async def test_sync_tools_never_use_the_loops_default_executor() -> None:
    loop = asyncio.get_running_loop()
    default = ThreadPoolExecutor(1)
    loop.set_default_executor(default)
    tools = registry(tool("slow", "slow", timeout_seconds=0.05))
    assert (await call_tool(tools, "slow", {"seconds": 0.5}, SOFIA)).code == "timeout"
    # The default executor's only thread is free: the stuck tool is elsewhere.
    ran = await asyncio.wait_for(loop.run_in_executor(None, threading.current_thread), 0.3)
    assert ran.name != "turnout-tool"
