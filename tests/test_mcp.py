"""MCP servers as tool sources, for real: the fixture server (tests/tools_fixtures/mcp_server.py)
runs as a stdio subprocess or a streamable HTTP server, and is killed to test reconnection."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.plugins.tools.calls import call_tool
from gateway.plugins.tools.mcp import McpConnection, McpServers, mcp_kind
from gateway.plugins.tools.metrics import ToolMetrics
from gateway.plugins.tools.registry import FUNCTION_NAME, Caller, ToolRegistry
from gateway.plugins.tools.settings import McpServer, ToolDefinition
from tests.gateway_server import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVER = (sys.executable, "-m", "tests.tools_fixtures.mcp_server")
SOFIA = Caller("agent:sofia")


def stdio(**extra: Any) -> McpServer:
    options: dict[str, Any] = {"timeout_seconds": 10.0, "connect_timeout_seconds": 20.0, **extra}
    return McpServer(command=SERVER, cwd=str(ROOT), **options)


async def until(check: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def fixture_server() -> AsyncIterator[tuple[ToolRegistry, McpConnection, CollectorRegistry]]:
    registry = ToolRegistry()
    collector = CollectorRegistry()
    servers = McpServers({"fx": stdio()}, registry, ToolMetrics(collector))
    await servers.start()
    try:
        yield registry, servers.connections["fx"], collector
    finally:
        await servers.close()


def gauge(collector: CollectorRegistry, server: str) -> float | None:
    return collector.get_sample_value("turnout_mcp_server_up", {"server": server})


async def test_a_stdio_servers_tools_are_listed_with_openai_safe_names(
    fixture_server: tuple[ToolRegistry, McpConnection, CollectorRegistry],
) -> None:
    registry, connection, metrics = fixture_server
    ids = {e.spec.id for e in registry}
    assert ids == {"fx_add", "fx_echo", "fx_files_read_v2", "fx_whoami", "fx_fail", "fx_sleep"}
    assert all(FUNCTION_NAME.match(e.function) for e in registry)
    odd = registry.get("fx_files_read_v2")
    assert odd is not None
    assert (odd.spec.target, odd.spec.executor) == ("fx/files.read/v2", "mcp")
    assert odd.spec.input_schema["required"] == ["path"]
    assert connection.connected and gauge(metrics, "fx") == 1


async def test_calls_return_structured_results_and_errors(
    fixture_server: tuple[ToolRegistry, McpConnection, CollectorRegistry],
) -> None:
    registry, _, _ = fixture_server
    added = await call_tool(registry, "fx_add", {"a": 2, "b": 3}, SOFIA)
    assert added.ok and added.result == {"result": 5}
    read = await call_tool(registry, "fx_files_read_v2", {"path": "/a"}, SOFIA)
    assert read.result == {"result": "contents of /a"}
    failed = await call_tool(registry, "fx_fail", {"reason": "nope"}, SOFIA)
    assert failed.code == "tool_error" and "nope" in (failed.error or "")
    invalid = await call_tool(registry, "fx_add", {"a": "two"}, SOFIA)
    assert invalid.code == "invalid_arguments"


async def test_a_killed_server_is_restarted_and_its_tools_work_again(
    fixture_server: tuple[ToolRegistry, McpConnection, CollectorRegistry],
) -> None:
    registry, connection, metrics = fixture_server
    first = await call_tool(registry, "fx_whoami", {}, SOFIA)
    pid = first.result["pid"]
    os.kill(pid, signal.SIGKILL)
    # Noticed when its stdout closes: no call and no refresh needed.
    await until(lambda: connection.connects == 2)
    second = await call_tool(registry, "fx_whoami", {}, SOFIA)
    assert second.ok and second.result["pid"] != pid
    assert {e.spec.id for e in registry} >= {"fx_add", "fx_whoami"}
    assert gauge(metrics, "fx") == 1


async def test_a_call_in_flight_when_the_server_dies_fails_cleanly(
    fixture_server: tuple[ToolRegistry, McpConnection, CollectorRegistry],
) -> None:
    registry, connection, _ = fixture_server
    pid = (await call_tool(registry, "fx_whoami", {}, SOFIA)).result["pid"]
    slow = asyncio.ensure_future(call_tool(registry, "fx_sleep", {"seconds": 30}, SOFIA))
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    outcome = await asyncio.wait_for(slow, 10)
    assert outcome.code == "tool_error" and "went away" in (outcome.error or "")
    await until(lambda: connection.connected and connection.connects == 2)
    assert (await call_tool(registry, "fx_echo", {"text": "back"}, SOFIA)).ok


async def test_include_prefix_and_permissions_come_from_the_server_config() -> None:
    registry = ToolRegistry()
    settings = stdio(prefix="", include=("add", "files.read/v2"), allowed_agents=("agent:pm",))
    servers = McpServers({"fx": settings}, registry)
    await servers.start()
    try:
        assert {e.spec.id for e in registry} == {"add", "files_read_v2"}
        denied = await call_tool(registry, "add", {"a": 1, "b": 1}, SOFIA)
        assert denied.code == "permission_denied"
        allowed = await call_tool(registry, "add", {"a": 1, "b": 1}, Caller("agent:pm"))
        assert allowed.result == {"result": 2}
    finally:
        await servers.close()
    assert len(registry) == 0


async def test_one_server_tool_can_be_configured_with_its_own_id_and_schema() -> None:
    registry = ToolRegistry()
    servers = McpServers({"fx": stdio(include=("echo",))}, registry)
    build = mcp_kind(servers)
    definition = ToolDefinition(
        id="say",
        executor="mcp",
        target="fx/echo",
        input_schema={"type": "object", "properties": {"text": {"maxLength": 5}}},
    )
    registry.add(build(definition))
    with pytest.raises(ValueError, match="'<mcp server>/<tool>'"):
        build(ToolDefinition(id="x", executor="mcp", target="nowhere/echo"))
    await servers.start()
    try:
        assert (await call_tool(registry, "say", {"text": "hi"}, SOFIA)).result == {"result": "hi"}
        long = await call_tool(registry, "say", {"text": "too long"}, SOFIA)
        assert long.code == "invalid_arguments"
    finally:
        await servers.close()


async def test_an_unreachable_server_does_not_hold_up_start_and_calls_fail_fast() -> None:
    registry = ToolRegistry()
    settings = McpServer(url=f"http://127.0.0.1:{free_port()}/mcp", connect_timeout_seconds=0.5)
    servers = McpServers({"gone": settings}, registry)
    started = time.monotonic()
    await servers.start()
    try:
        assert time.monotonic() - started < 5
        connection = servers.connections["gone"]
        assert not connection.connected and connection.last_error
        assert len(registry) == 0
    finally:
        await servers.close()


# --- streamable HTTP ------------------------------------------------------------------------


class HttpMcpServer:
    """The fixture server as a streamable HTTP server in a subprocess, restartable on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> None:
        self.process = subprocess.Popen(
            [*SERVER, "--http", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("MCP HTTP fixture did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def http_server() -> Iterator[HttpMcpServer]:
    server = HttpMcpServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_a_streamable_http_server_is_listed_called_and_reconnected(
    http_server: HttpMcpServer,
) -> None:
    registry = ToolRegistry()
    settings = McpServer(
        url=http_server.url, refresh_seconds=0.3, timeout_seconds=5, connect_timeout_seconds=5
    )
    servers = McpServers({"web": settings}, registry)
    await servers.start()
    try:
        connection = servers.connections["web"]
        assert (await call_tool(registry, "web_add", {"a": 20, "b": 22}, SOFIA)).result == {
            "result": 42
        }
        assert registry.get("web_extra") is None
        http_server.kill()
        # An HTTP server's death shows when the periodic listing fails.
        await until(lambda: not connection.connected)
        http_server.start(MCP_FIXTURE_EXTRA="1")
        await until(lambda: connection.connected and connection.connects == 2)
        assert registry.get("web_extra") is not None
        assert (await call_tool(registry, "web_extra", {}, SOFIA)).result == {"result": "extra"}
    finally:
        await servers.close()
