"""The tools plugin's section of routing.yaml (``tools:``), decoded by the plugin itself.

The config loader keeps the section raw (``Config.sections``) and hands it to the plugin: the
gateway's own config knows nothing of tools.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from gateway.config.schema import Config
from gateway.config.sections import section

SECTION = "tools"


class ToolDefinition(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One tool turnout runs itself (seed 004's ToolDefinition)."""

    # What callers and routes name it by ("projects.list"); models see it with every character
    # outside OpenAI's [a-zA-Z0-9_-] replaced ("projects_list").
    id: str
    # An executor kind: http, python or mcp (plugins may register more).
    executor: str
    # http: the URL POSTed to; python: "package.module:function"; mcp: "<server>/<tool name>".
    target: str
    # A human title; default: the id.
    name: str = ""
    description: str = ""
    # JSON Schema the arguments are validated against before the tool runs.
    input_schema: dict[str, Any] = {}
    # JSON Schema the result must match (checked after the tool ran); none: anything.
    output_schema: dict[str, Any] | None = None
    # Agent ids or globs that may call it; omitted: every agent.
    allowed_agents: tuple[str, ...] | None = None
    timeout_seconds: float = 30.0
    # http only: extra request headers (put secrets in ${ENV} references).
    headers: dict[str, str] = {}


class McpServer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An MCP server whose tools are listed into the registry: a command (stdio) or a URL."""

    # stdio: the server's argument list, started and restarted by turnout.
    command: tuple[str, ...] = ()
    env: dict[str, str] = {}
    cwd: str = ""
    # Streamable HTTP: the server's endpoint (http://host:port/mcp).
    url: str = ""
    # Tool ids are "<prefix>_<tool>"; default prefix: the server's name ("" for none).
    prefix: str | None = None
    # Only these tools (by the server's names); empty: all of them.
    include: tuple[str, ...] = ()
    allowed_agents: tuple[str, ...] | None = None
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 15.0
    # How often the tool list is refreshed, which also notices a server that stopped answering.
    refresh_seconds: float = 30.0


class HttpTools(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the http executor may connect (no SSRF through the gateway)."""

    # Networks ("10.0.0.0/8", "127.0.0.1") or host names that may resolve to private,
    # loopback or link-local addresses; every other destination must be public.
    allow: tuple[str, ...] = ()
    max_response_bytes: int = 1024 * 1024


class AgentLoop(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The server-side tool loop (seed 002): call the model, run its tool calls, repeat."""

    # Tool rounds before the model is made to answer (tool_choice "none").
    max_tool_rounds: int = 4
    final_instruction: str = (
        "Do not call any more tools. Answer the original request now, using the tool results above."
    )
    # "user" suits every chat template; some reject a system message after the first.
    final_instruction_role: Literal["user", "system"] = "user"
    # A tool result longer than this (characters of JSON) is cut before the model sees it.
    max_result_chars: int = 16000
    # By logical model name: tools turnout runs for every request to that model.
    routes: dict[str, tuple[str, ...]] = {}


class Tools(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The tools plugin (``plugins.enabled: [tools]``): a registry, executors, the agent loop."""

    registry: tuple[ToolDefinition, ...] = ()
    mcp_servers: dict[str, McpServer] = {}
    # Threads for plain (non-async) python tools, their own pool: a tool stuck past its timeout
    # holds one until it returns; with all held, calls are refused with a tool error.
    python_threads: int = 8
    http: HttpTools = HttpTools()
    agent: AgentLoop = AgentLoop()


def settings_of(config: Config) -> Tools:
    """``tools:`` decoded (its defaults when absent); a ConfigError names the key path."""
    return section(config, SECTION, Tools)


def section_problems(config: Config, tools: Tools) -> list[str]:
    """What msgspec cannot check in ``tools``; the JSON Schemas are checked at start-up."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools.registry):
        where = f"tools.registry[{i}]"
        if not tool.id:
            problems.append(f"{where}.id: expected a tool id")
        elif tool.id in seen:
            problems.append(f"{where}.id: {tool.id!r} is defined twice")
        seen.add(tool.id)
        if tool.timeout_seconds <= 0:
            problems.append(f"{where}.timeout_seconds: expected a number > 0")
    for name, server in tools.mcp_servers.items():
        where = f"tools.mcp_servers.{name}"
        if bool(server.command) == bool(server.url):
            problems.append(f"{where}: expected either command (stdio) or url (streamable HTTP)")
        elif server.url and urlsplit(server.url).scheme not in ("http", "https"):
            problems.append(f"{where}.url: expected an http(s) URL, got {server.url!r}")
        for key in ("timeout_seconds", "connect_timeout_seconds", "refresh_seconds"):
            if getattr(server, key) <= 0:
                problems.append(f"{where}.{key}: expected a number > 0")
    if tools.python_threads < 1:
        problems.append("tools.python_threads: expected a number >= 1")
    for k, entry in enumerate(tools.http.allow):
        if not entry.strip():
            problems.append(f"tools.http.allow[{k}]: expected a network or a host name")
    if tools.agent.max_tool_rounds < 0:
        problems.append("tools.agent.max_tool_rounds: expected a number >= 0")
    models = {m.name for m in config.models}
    for name in tools.agent.routes:
        if name not in models:
            known = ", ".join(sorted(models)) or "none defined"
            problems.append(f"tools.agent.routes.{name}: unknown model (models: {known})")
    return problems
