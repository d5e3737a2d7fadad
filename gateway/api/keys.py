"""The admin API for keys and budgets: what ``turnout keys`` does, over HTTP, for the admin key.

    POST   /v1/keys              {"agent": "ci-bot", "models": ["fast"], "rpm": 60, "budget": 5,
                                  "budget_period": "daily"}  -> 201, the secret once as "key"
    GET    /v1/keys[?all=true]   every key (revoked ones too with all), with spent_usd
    DELETE /v1/keys/{id}         revoke by id or name
    GET    /v1/budgets           project budgets (seed 004's microdao_id), with spend
    PUT    /v1/budgets/{project} {"budget": 20, "budget_period": "monthly"}
    DELETE /v1/budgets/{project}

The database is the source of truth, as for the CLI: this gateway applies a change at once,
other gateways on the same database within ``KeyCache``'s refresh (two seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody

from gateway import keys_admin
from gateway.errors import BadRequest, NotFound
from gateway.guards import administrator
from gateway.keys import connect
from gateway.keys_admin import BudgetBody, NewKey
from gateway.state import GatewayState

T = TypeVar("T")


class KeysController(Controller):
    path = "/v1/keys"
    guards = (administrator,)

    @post("/", status_code=201)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[NewKey]
    ) -> dict[str, Any]:
        gateway = _state(request)
        created = await _on_database(gateway, keys_admin.create, data)
        await gateway.keys.refresh()
        return created

    @get("/")
    async def list_keys(
        self, request: Request[Any, Any, Any], all: FromQuery[bool] = False
    ) -> dict[str, Any]:
        gateway = _state(request)
        data = await _on_database(gateway, keys_admin.listing, all, gateway.budgets.spent)
        return {"object": "list", "data": data}

    @delete("/{key_id:str}", status_code=200)
    async def revoke(
        self, request: Request[Any, Any, Any], key_id: FromPath[str]
    ) -> dict[str, Any]:
        gateway = _state(request)
        revoked = await _on_database(gateway, keys_admin.revoke, key_id)
        if revoked is None:
            raise NotFound(f"no active key with id or name {key_id!r}", param="id")
        await gateway.keys.refresh()
        return revoked


class BudgetsController(Controller):
    path = "/v1/budgets"
    guards = (administrator,)

    @get("/")
    async def list_budgets(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        gateway = _state(request)
        data = await _on_database(gateway, keys_admin.budgets, gateway.budgets.project_spent)
        return {"object": "list", "data": data}

    @put("/{project:str}", status_code=200)
    async def set_budget(
        self,
        request: Request[Any, Any, Any],
        project: FromPath[str],
        data: JSONBody[BudgetBody],
    ) -> dict[str, Any]:
        gateway = _state(request)
        budget = await _on_database(gateway, keys_admin.set_budget, project, data)
        await gateway.keys.refresh()
        return budget

    @delete("/{project:str}", status_code=200)
    async def remove_budget(
        self, request: Request[Any, Any, Any], project: FromPath[str]
    ) -> dict[str, Any]:
        gateway = _state(request)
        if not await _on_database(gateway, keys_admin.remove_budget, project):
            raise NotFound(f"project {project!r} has no budget", param="project")
        await gateway.keys.refresh()
        return {"project": project, "removed": True}


def _state(request: Request[Any, Any, Any]) -> GatewayState:
    # From the app's state rather than the ``gateway`` dependency: Litestar resolves a
    # dependency's annotation at request time, and GatewayState's names TYPE_CHECKING-only types.
    state: GatewayState = request.app.state["gateway"]
    return state


async def _on_database(gateway: GatewayState, operation: Callable[..., T], *args: Any) -> T:
    """``operation(connection, *args)`` on a connection of its own, in a worker thread."""
    database = gateway.config.server.database
    if database == ":memory:":
        # Each connection would be a new, empty database: nothing stored would ever count.
        raise BadRequest("keys need server.database to be a file, not ':memory:'")

    def run() -> T:
        connection = connect(database, prepare=False)
        try:
            return operation(connection, *args)
        finally:
            connection.close()

    return await asyncio.to_thread(run)
