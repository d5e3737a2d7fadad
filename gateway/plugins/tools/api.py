"""The tools over HTTP: ``/v1/tools`` and seed 004's ``/internal/tools``, on the same code.

Listings show only the tools the caller may use. A call answers ``{ok, result, error}``
(plus ``code``): a refusal (unknown tool, not permitted, arguments outside the schema) also
has the matching HTTP status (404, 403, 400); a tool that ran and failed or timed out is a
200 with ``ok: false``: the request was fine, the tool was not.

Who calls: the key's agent; a trusted caller (the admin key, a trusted key, or a local caller
in embedded mode) may name another agent with ``X-Agent-Id``, or in seed 004's ``agent_id``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from gateway.auth import Authenticator, speaking_for
from gateway.errors import BadRequest, Forbidden
from gateway.identity import Identity
from gateway.plugins.tools.calls import Outcome, call_tool
from gateway.plugins.tools.registry import Caller, Entry, ToolRegistry

# Refusals answer with their status; everything else that went wrong is the tool's own failure.
_REFUSALS = {"not_found": 404, "permission_denied": 403, "invalid_arguments": 400}
_decode_any = msgspec.json.Decoder()


class ToolCallBody(msgspec.Struct):
    """``POST /v1/tools/call``: a tool by id (or function name) and its arguments."""

    tool: str
    # An object, or the JSON string a model's tool call carries.
    arguments: dict[str, Any] | str = {}
    context: dict[str, Any] = {}


class InternalCallBody(msgspec.Struct):
    """``POST /internal/tools/call``: seed 004's ToolCallRequest."""

    tool_id: str
    agent_id: str | None = None
    microdao_id: str | None = None
    args: dict[str, Any] = {}
    context: dict[str, Any] | None = None


class ToolCallResult(msgspec.Struct):
    """Seed 004's ToolCallResult, plus a machine-readable ``code`` when ``ok`` is false, and,
    on a 400, ``param``: the request field that is wrong (``arguments.city``), as in every
    other 400's envelope."""

    ok: bool
    result: Any = None
    error: str | None = None
    code: str | None = None
    # Left out of the answer unless set (msgspec omits UNSET fields): seed 004's shape stays.
    param: str | msgspec.UnsetType = msgspec.UNSET


class ToolsController(Controller):
    path = "/v1/tools"

    @get("/")
    async def list_tools(
        self,
        request: Request[Any, Any, Any],
        tools: NamedDependency[ToolRegistry],
        auth: NamedDependency[Authenticator],
    ) -> dict[str, Any]:
        identity = _identity(auth, request)
        data = [_openai_view(e, identity) for e in _visible(tools, identity)]
        return {"object": "list", "data": data}

    @post("/call", status_code=200)
    async def call(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ToolCallBody],
        tools: NamedDependency[ToolRegistry],
        auth: NamedDependency[Authenticator],
    ) -> Response[ToolCallResult]:
        identity = _identity(auth, request)
        arguments: Any = data.arguments
        if isinstance(arguments, str):
            try:
                arguments = _decode_any.decode(arguments) if arguments.strip() else {}
            except msgspec.DecodeError as exc:
                raise BadRequest(
                    f"arguments are not valid JSON: {exc}", param="arguments"
                ) from None
        caller = Caller.of(identity, _request_id(request), data.context)
        return await _call(tools, data.tool, arguments, caller, "arguments")


class InternalToolsController(Controller):
    path = "/internal/tools"

    @get("/")
    async def list_tools(
        self,
        request: Request[Any, Any, Any],
        tools: NamedDependency[ToolRegistry],
        auth: NamedDependency[Authenticator],
    ) -> list[dict[str, Any]]:
        identity = _identity(auth, request)
        return [_seed_view(e, identity) for e in _visible(tools, identity)]

    @post("/call", status_code=200)
    async def call(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[InternalCallBody],
        tools: NamedDependency[ToolRegistry],
        auth: NamedDependency[Authenticator],
    ) -> Response[ToolCallResult]:
        identity = _identity(auth, request)
        if data.agent_id and data.agent_id != identity.agent_id:
            if not identity.trusted:
                raise Forbidden(
                    f"this key acts for agent {identity.agent_id!r}, not {data.agent_id!r}",
                    param="agent_id",
                )
            identity = _acting_for(identity, data.agent_id)
        caller = Caller.of(identity, _request_id(request), data.context)
        if data.microdao_id:
            caller = replace(caller, project=data.microdao_id)
        return await _call(tools, data.tool_id, data.args, caller, "args")


def tool_controllers() -> list[type[Controller]]:
    """For the plugin's ``register_routes``: they take its registry as the ``tools`` dependency."""
    return [ToolsController, InternalToolsController]


async def _call(
    tools: ToolRegistry, name: str, arguments: Any, caller: Caller, field: str
) -> Response[ToolCallResult]:
    """``field`` is the body's name for the arguments, which a 400 names (``args.city``)."""
    outcome: Outcome = await call_tool(tools, name, arguments, caller, tools.metrics)
    body = ToolCallResult(outcome.ok, outcome.result, outcome.error, outcome.code)
    if outcome.where is not None:
        body.param = field + outcome.where
    status = _REFUSALS.get(outcome.code or "", 200)
    return Response(body, status_code=status)


def _identity(auth: Authenticator, request: Request[Any, Any, Any]) -> Identity:
    scope: Any = request.scope
    return speaking_for(auth.identify(scope), scope, {})


def _acting_for(identity: Identity, agent_id: str) -> Identity:
    return Identity(
        key_id=identity.key_id,
        agent_id=agent_id,
        project=identity.project,
        channel=identity.channel,
        # Speaking for an agent is acting with that agent's permissions, not the admin's.
        is_admin=False,
        limits=identity.limits,
        allowed_models=identity.allowed_models,
        trusted=identity.trusted,
    )


def _visible(tools: ToolRegistry, identity: Identity) -> list[Entry]:
    entries = tools.visible_to(identity.agent_id, identity.is_admin)
    return sorted(entries, key=lambda e: e.spec.id)


def _request_id(request: Request[Any, Any, Any]) -> str:
    return request.headers.get("x-request-id", "")[:128]


def _openai_view(entry: Entry, identity: Identity) -> dict[str, Any]:
    spec = entry.spec
    view: dict[str, Any] = {
        "id": spec.id,
        "object": "tool",
        "name": spec.title,
        "description": spec.description,
        "executor": spec.executor,
        "input_schema": spec.input_schema,
        "output_schema": spec.output_schema,
        # What to put in a chat request's "tools" for turnout to run it.
        "function": {"name": entry.function},
    }
    if identity.is_admin:
        view["target"] = spec.target
        view["allowed_agents"] = spec.allowed_agents
    return view


def _seed_view(entry: Entry, identity: Identity) -> dict[str, Any]:
    spec = entry.spec
    view: dict[str, Any] = {
        "id": spec.id,
        "name": spec.title,
        "description": spec.description,
        "input_schema": spec.input_schema,
        "output_schema": spec.output_schema,
        "executor": spec.executor,
        "allowed_agents": spec.allowed_agents,
    }
    if identity.is_admin:
        view["target"] = spec.target
    return view
