"""Which tools turnout runs itself for one chat request, and which stay the client's.

A request asks turnout to run a registered tool by listing it with only a name::

    "tools": [{"type": "function", "function": {"name": "get_weather"}}]

and a route (``tools.agent.routes.<model>``) can add tools to every request for that model.
Every other tool definition is the client's own (Claude Code's, opencode's): it goes to the
model unchanged and calls to it go back to the client. A client tool that shares a name with a
registered one wins, so a client never loses a tool it defined.

This runs on every chat request, so a request with no server-side tools costs a length check
and a dict lookup; the request's tool list is decoded only when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from gateway.errors import BadRequest, Forbidden
from gateway.identity import Identity
from gateway.plugins.tools.registry import Entry, ToolRegistry, may_call
from gateway.plugins.tools.settings import AgentLoop


class _FunctionRef(msgspec.Struct):
    name: str = ""
    # Only whether it is there matters: a definition with parameters is the client's own.
    # (Raw, not decoded: a client's schemas can be large. Empty when absent.)
    parameters: msgspec.Raw = msgspec.Raw()


class _ToolRef(msgspec.Struct):
    type: str = "function"
    function: _FunctionRef | None = None


class Options(msgspec.Struct, forbid_unknown_fields=True):
    """The request's own ``turnout`` field (removed before the model sees the request)."""

    # Add a trace of every round and tool call to the answer.
    debug: bool = False
    # Fewer tool rounds than the configured maximum (never more).
    max_tool_rounds: int | None = None


_decode_list = msgspec.json.Decoder(list[msgspec.Raw])
_decode_ref = msgspec.json.Decoder(_ToolRef)
_decode_options = msgspec.json.Decoder(Options)


@dataclass(frozen=True, slots=True)
class AgentPlan:
    # By the function name the model calls them by.
    server: dict[str, Entry]
    # The client's own definitions, byte for byte.
    client: tuple[msgspec.Raw, ...]
    max_rounds: int
    debug: bool = False
    # The client's tool_choice, used in the first round only.
    tool_choice: msgspec.Raw | None = None


def plan_agent(
    registry: ToolRegistry,
    settings: AgentLoop,
    model: str,
    fields: dict[str, msgspec.Raw],
    identity: Identity,
) -> AgentPlan | None:
    """The plan for this request, or None when turnout runs no tool for it (the usual case)."""
    route = settings.routes.get(model)
    listed = fields.get("tools")
    if (route is None and listed is None) or not len(registry):
        return None
    server: dict[str, Entry] = {}
    client: list[msgspec.Raw] = []
    client_names: set[str] = set()
    for raw in _tool_list(listed):
        entry, name = _server_tool(registry, raw)
        if entry is None:
            client.append(raw)
            if name:
                client_names.add(name)
            continue
        if not may_call(entry.spec, identity.agent_id, identity.is_admin):
            raise Forbidden(
                f"agent {identity.agent_id!r} may not use tool {entry.spec.id!r}", param="tools"
            )
        server[entry.function] = entry
    for tool_id in route or ():
        entry = registry.get(tool_id)
        if entry is None or entry.function in client_names or entry.function in server:
            continue
        if may_call(entry.spec, identity.agent_id, identity.is_admin):
            server[entry.function] = entry
    if not server:
        return None
    options = _options(fields.get("turnout"))
    rounds = settings.max_tool_rounds
    if options.max_tool_rounds is not None:
        rounds = max(0, min(rounds, options.max_tool_rounds))
    return AgentPlan(server, tuple(client), rounds, options.debug, fields.get("tool_choice"))


def _tool_list(raw: msgspec.Raw | None) -> list[msgspec.Raw]:
    if raw is None:
        return []
    try:
        return _decode_list.decode(raw)
    except msgspec.DecodeError:
        # Not a list: the upstream gets it as it came and says what is wrong with it.
        return []


def _server_tool(registry: ToolRegistry, raw: msgspec.Raw) -> tuple[Entry | None, str]:
    try:
        ref = _decode_ref.decode(raw)
    except msgspec.DecodeError:
        return None, ""
    function = ref.function
    if function is None or ref.type != "function":
        return None, ""
    if len(function.parameters) and bytes(function.parameters) != b"null":
        return None, function.name
    return registry.get(function.name), function.name


def _options(raw: msgspec.Raw | None) -> Options:
    if raw is None:
        return Options()
    try:
        return _decode_options.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid value for 'turnout': {exc}", param="turnout") from None
