"""The tools turnout knows: what ``register_tools`` receives, what the API lists and calls.

A tool is anything with a ``spec`` and an async ``run``. Executor kinds (http, python, mcp, or
one a plugin brings) are registered by name and build tools from ``routing.yaml`` entries, so
no code branches on the kind. Services are what executors need running (an HTTP session, MCP
connections): started once the gateway starts, closed when it stops.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Protocol

import msgspec

from gateway.identity import Identity
from gateway.plugins.tools.metrics import ToolMetrics
from gateway.plugins.tools.schema import Schema
from gateway.plugins.tools.settings import ToolDefinition

# OpenAI's rule for function names; models only ever see names that match it.
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_OUTSIDE = re.compile(r"[^a-zA-Z0-9_-]")
_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}
_encode = msgspec.json.Encoder().encode


def function_name(name: str, taken: Container[str] = ()) -> str:
    """``name`` in OpenAI's function-name charset, at most 64 characters, not in ``taken``.

    Names that had to be cut, or that collide once cleaned ("a.b" and "a_b"), end in a short
    hash of the original, so the same tool keeps the same name across restarts.
    """
    cleaned = _OUTSIDE.sub("_", name) or "tool"
    if len(cleaned) <= 64 and cleaned not in taken:
        return cleaned
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{cleaned[:55]}_{digest}"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What a tool is, to callers and to models."""

    id: str
    description: str
    input_schema: dict[str, Any]
    executor: str
    # Shown to administrators only: a URL, an import path, an MCP server and tool.
    target: str = ""
    title: str = ""
    output_schema: dict[str, Any] | None = None
    # Agent ids or globs; None: every agent.
    allowed_agents: tuple[str, ...] | None = None
    timeout: float = 30.0

    @classmethod
    def from_definition(cls, definition: ToolDefinition) -> ToolSpec:
        return cls(
            id=definition.id,
            title=definition.name or definition.id,
            description=definition.description,
            input_schema=definition.input_schema,
            output_schema=definition.output_schema,
            executor=definition.executor,
            target=definition.target,
            allowed_agents=definition.allowed_agents,
            timeout=definition.timeout_seconds,
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a tool runs for; executors pass it on (the http executor sends it as ``context``)."""

    agent_id: str
    is_admin: bool = False
    project: str | None = None
    channel: str | None = None
    request_id: str = ""
    # Free-form context from the call (seed 004's ``context``).
    context: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, identity: Identity, request_id: str = "", context: dict[str, Any] | None = None
    ) -> Caller:
        return cls(
            agent_id=identity.agent_id,
            is_admin=identity.is_admin,
            project=identity.project,
            channel=identity.channel,
            request_id=request_id,
            context=dict(context or {}),
        )


class Tool(Protocol):
    """One callable tool. ``run`` raises ``ToolFailed`` for failures the caller should see."""

    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, arguments: dict[str, Any], caller: Caller) -> Any: ...


class Service(Protocol):
    """Something executors need running while the gateway runs."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


# Builds a tool from its routing.yaml entry; raises ValueError naming what is wrong.
ToolFactory = Callable[[ToolDefinition], Tool]


def may_call(spec: ToolSpec, agent_id: str, is_admin: bool = False) -> bool:
    if is_admin or spec.allowed_agents is None:
        return True
    return any(fnmatchcase(agent_id, pattern) for pattern in spec.allowed_agents)


@dataclass(slots=True)
class Entry:
    """A registered tool with what is derived from it once: names, compiled schemas, its
    OpenAI function definition already encoded (the agent loop sends it every round)."""

    tool: Tool
    function: str
    arguments: Schema
    output: Schema | None
    openai: bytes

    @property
    def spec(self) -> ToolSpec:
        return self.tool.spec


class ToolRegistry:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._functions: dict[str, str] = {}
        self._kinds: dict[str, ToolFactory] = {}
        self._services: list[Service] = []
        # Set by the tools plugin; the API and the agent loop count calls with it.
        self.metrics: ToolMetrics | None = None

    # --- tools --------------------------------------------------------------------------------

    def add(self, tool: Tool) -> Entry:
        """Register a tool; raises ValueError for a taken id or an invalid JSON Schema."""
        spec = tool.spec
        if spec.id in self._entries:
            raise ValueError(f"tool {spec.id!r} is already registered")
        arguments = Schema(spec.input_schema or _EMPTY_OBJECT, f"tool {spec.id!r} input_schema")
        output = (
            Schema(spec.output_schema, f"tool {spec.id!r} output_schema")
            if spec.output_schema
            else None
        )
        taken = self._functions.keys() | self._entries.keys()
        name = function_name(spec.id, taken)
        openai = _encode(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": spec.description or spec.title or spec.id,
                    "parameters": spec.input_schema or _EMPTY_OBJECT,
                },
            }
        )
        entry = Entry(tool, name, arguments, output, openai)
        self._entries[spec.id] = entry
        self._functions[name] = spec.id
        return entry

    def remove(self, tool_id: str) -> None:
        entry = self._entries.pop(tool_id, None)
        if entry is not None:
            del self._functions[entry.function]

    def get(self, name: str) -> Entry | None:
        """By id, or by the function name models call it by."""
        entry = self._entries.get(name)
        if entry is None:
            tool_id = self._functions.get(name)
            entry = self._entries.get(tool_id) if tool_id is not None else None
        return entry

    def by_function(self, name: str) -> Entry | None:
        """By the function name a model called."""
        tool_id = self._functions.get(name)
        return self._entries.get(tool_id) if tool_id is not None else None

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def visible_to(self, agent_id: str, is_admin: bool = False) -> list[Entry]:
        return [e for e in self if may_call(e.spec, agent_id, is_admin)]

    # --- executor kinds -----------------------------------------------------------------------

    def register_kind(self, kind: str, factory: ToolFactory) -> None:
        if kind in self._kinds:
            raise ValueError(f"tool executor kind {kind!r} is already registered")
        self._kinds[kind] = factory

    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def build(self, definition: ToolDefinition) -> Tool:
        factory = self._kinds.get(definition.executor)
        if factory is None:
            known = ", ".join(self.kinds()) or "none"
            raise ValueError(f"unknown executor {definition.executor!r} (known: {known})")
        return factory(definition)

    # --- services -----------------------------------------------------------------------------

    def add_service(self, service: Service) -> None:
        self._services.append(service)

    async def start(self) -> None:
        for service in self._services:
            await service.start()

    async def close(self) -> None:
        # Reversed: later services may lean on earlier ones.
        for service in reversed(self._services):
            await service.close()
