"""``/engine/*``: hot-swap local roles, see what is loaded, probe readiness. All callable with curl."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from gateway.engines.states import EngineState
from gateway.engines.supervisor import Supervisor
from gateway.errors import NotFound
from gateway.guards import administrator
from gateway.state import GatewayState


class EngineController(Controller):
    path = "/engine"
    guards = (administrator,)

    @post("/switch/{role:str}", status_code=202)
    async def switch(
        self,
        supervisor: NamedDependency[Supervisor | None],
        role: FromPath[str],
        wait: FromQuery[bool] = False,
    ) -> Response[dict[str, Any]]:
        supervisor = _supervisor(supervisor, role)
        before = loaded_roles(supervisor)
        body: dict[str, Any] = {
            "from": before[0] if len(before) == 1 else before or None,
            "to": role,
        }
        if supervisor.status(role).state is EngineState.READY and len(before) == 1 and not wait:
            await supervisor.switch(role, wait=False)
            return Response({"status": "ready", **body}, status_code=200)
        result = await supervisor.switch(role, wait=wait)
        if not wait:
            return Response({"status": "switching", **body}, status_code=202)
        status = 200 if result.get("status") == "ready" else 503
        return Response({**result, **body, "to": result.get("role", role)}, status_code=status)

    @get("/status")
    async def status(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        supervisor = gateway.supervisor
        engines: dict[str, Any] = {}
        if supervisor is not None:
            engines = {name: _engine(gateway, supervisor, name) for name in supervisor.roles}
            loaded = loaded_roles(supervisor)
        else:
            loaded = []
        state, _ = health_of(supervisor)
        return {
            "role": loaded[0] if loaded else None,
            "loaded": loaded,
            "state": state,
            "switching_to": supervisor.pinned if supervisor else None,
            "engines": engines,
            "queue": {name: supervisor.queue_depth(name) for name in supervisor.roles}
            if supervisor
            else {},
            "providers": _providers(gateway),
            "targets": _targets(gateway),
        }

    @get("/health")
    async def health(
        self, supervisor: NamedDependency[Supervisor | None]
    ) -> Response[dict[str, Any]]:
        state, role = health_of(supervisor)
        return Response(
            {"state": state, "role": role}, status_code=200 if state == "ready" else 503
        )

    @post("/unload", status_code=200)
    async def unload(
        self,
        supervisor: NamedDependency[Supervisor | None],
        role: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        supervisor = _supervisor(supervisor, role)
        roles = (role,) if role else tuple(supervisor.roles)
        await supervisor.unload(roles)
        return {"status": "unloaded", "roles": list(roles)}


def _supervisor(supervisor: Supervisor | None, role: str | None) -> Supervisor:
    known = sorted(supervisor.roles) if supervisor else []
    if supervisor is None or (role is not None and role not in supervisor.roles):
        raise NotFound(
            f"unknown role {role!r}; roles: {', '.join(known) or 'none configured (see roles: in routing.yaml)'}",
            param="role",
        )
    return supervisor


def loaded_roles(supervisor: Supervisor) -> list[str]:
    return [name for name in supervisor.roles if supervisor.status(name).state is EngineState.READY]


def health_of(supervisor: Supervisor | None) -> tuple[str, str | None]:
    """One word for readiness probes: ready, loading, switching, idle or failed."""
    if supervisor is None:
        return "ready", None
    states = {name: supervisor.status(name).state for name in supervisor.roles}
    ready = [n for n, s in states.items() if s is EngineState.READY]
    starting = [n for n, s in states.items() if s is EngineState.STARTING]
    stopping = [n for n, s in states.items() if s is EngineState.STOPPING]
    if starting:
        return ("switching" if ready or stopping else "loading"), starting[0]
    if stopping or (supervisor.pinned is not None and supervisor.pinned not in ready):
        return "switching", supervisor.pinned or (stopping[0] if stopping else None)
    if ready:
        return "ready", ready[0]
    failed = [n for n, s in states.items() if s is EngineState.FAILED]
    if failed:
        return "failed", failed[0]
    return "idle", None


def _engine(gateway: GatewayState, supervisor: Supervisor, name: str) -> dict[str, Any]:
    role = supervisor.roles[name]
    status = supervisor.status(name)
    now = time.monotonic()
    return {
        "engine": role.engine,
        "model": role.model,
        "state": status.state.value,
        "pid": status.pid,
        "port": gateway.role_ports.get(name),
        "since": status.since,
        "uptime_seconds": round(now - status.ready_at, 3) if status.ready_at is not None else None,
        "last_swap_seconds": status.last_start_seconds,
        "inflight": status.inflight,
        "queue": supervisor.queue_depth(name),
        "last_error": status.last_error or None,
        "exit_code": status.exit_code,
        "failures": status.failures,
        "context": role.context,
        "memory_mb": role.memory_mb,
        "ttl_seconds": role.ttl_seconds,
        "group": supervisor.topology.group_of.get(name),
        "persistent": name in supervisor.topology.persistent,
        "kv_cache": gateway.kv_cache.describe(name) if gateway.kv_cache else {"enabled": False},
    }


def _providers(gateway: GatewayState) -> dict[str, Any]:
    result = {}
    for name, provider in sorted(gateway.config.providers.items()):
        probe = gateway.availability(name)
        result[name] = {
            "kind": provider.kind,
            "base_url": provider.base_url,
            "local": provider.is_local,
            "available": probe.available,
            "detail": probe.detail,
        }
    return result


def _targets(gateway: GatewayState) -> dict[str, Any]:
    now = time.monotonic()
    return {
        key: {
            "inflight": s.inflight,
            "cooling_down": s.cooling_until > now,
            "consecutive_failures": s.consecutive_failures,
            "last_error": s.last_error,
        }
        for key, s in ((k, gateway.book.state(k)) for k in gateway.book)
    }
