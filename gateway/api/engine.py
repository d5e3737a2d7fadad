"""``/engine/*``: hot-swap local roles, see what is loaded, probe readiness. All callable with curl."""

from __future__ import annotations

import time
from typing import Any, cast

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent

from gateway.api.engine_events import engine_events
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
        # Only what this switch unloads: peers that may stay loaded beside it are not "from".
        before = supervisor.victims(role)
        body: dict[str, Any] = {"from": before[0] if len(before) == 1 else before or None}
        result = await supervisor.switch(role, wait=wait)
        kind = result.get("status")
        if kind == "switching":
            # Not waiting: the owner's decision, naming the fallback when it took one.
            code = 202
        else:
            code = 200 if kind == "ready" else 503
        return Response({**result, **body, "to": result.get("role", role)}, status_code=code)

    @get("/status")
    async def status(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        supervisor = gateway.supervisor
        engines: dict[str, Any] = {}
        if supervisor is not None:
            engines = {name: _engine(gateway, supervisor, name) for name in supervisor.roles}
            loaded = supervisor.loaded()
        else:
            loaded = []
        state, role = health_of(supervisor)
        return {
            # The loaded role health names; with none loaded, the one health names (loading,
            # failed): the two answers never disagree.
            "role": loaded[0] if loaded else role,
            "loaded": loaded,
            "state": state,
            "switching_to": supervisor.pinned if supervisor else None,
            "engines": engines,
            "queue": {name: supervisor.queue_depth(name) for name in supervisor.roles}
            if supervisor
            else {},
            "providers": _providers(gateway),
            "targets": _targets(gateway),
            "gpus": _gpus(gateway),
            # Other turnouts (peers:): each one's roles and states, reachable or not.
            "peers": gateway.fleet.describe() if gateway.fleet is not None else {},
        }

    @get("/health")
    async def health(
        self, supervisor: NamedDependency[Supervisor | None]
    ) -> Response[dict[str, Any]]:
        state, role = health_of(supervisor)
        return Response(
            {"state": state, "role": role}, status_code=200 if state == "ready" else 503
        )

    @get("/events")
    async def events(
        self, request: Request[Any, Any, Any], supervisor: NamedDependency[Supervisor | None]
    ) -> ServerSentEvent:
        """State and stage changes of every role, as they happen (engine_events.py)."""
        if supervisor is None:
            raise NotFound("no local roles to follow: none configured (see roles: in routing.yaml)")
        # The scope is the server's own dict: a key set on it reaches gateway/draining.py.
        return engine_events(supervisor.events, cast(dict[str, Any], request.scope))

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


def health_of(supervisor: Supervisor | None) -> tuple[str, str | None]:
    """One word for readiness probes: ready, loading, switching, idle or failed."""
    if supervisor is None:
        return "ready", None
    states = {name: supervisor.status(name).state for name in supervisor.roles}
    ready = supervisor.loaded()
    starting = [n for n, s in states.items() if s is EngineState.STARTING]
    stopping = [n for n, s in states.items() if s is EngineState.STOPPING]
    pinned = supervisor.pinned
    if starting:
        role = pinned if pinned in starting else starting[0]
        return ("switching" if ready or stopping else "loading"), role
    if stopping or (pinned is not None and pinned not in ready):
        return "switching", pinned or (stopping[0] if stopping else None)
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
        "memory": _memory(supervisor, name),
        "ttl_seconds": role.ttl_seconds,
        "group": supervisor.topology.group_of.get(name),
        "persistent": name in supervisor.topology.persistent,
        "kv_cache": gateway.kv_cache.describe(name) if gateway.kv_cache else {"enabled": False},
        "gpus": _placement(gateway, name),
    }


def _gpus(gateway: GatewayState) -> list[dict[str, Any]]:
    """Each GPU's memory as the prober last read it (every ``server.probe_seconds``)."""
    return [
        {"index": g.index, "name": g.name, "total_mb": g.total_mb, "free_mb": g.free_mb}
        for g in gateway.prober.resources().gpus
    ]


def _placement(gateway: GatewayState, name: str) -> dict[str, Any]:
    """``roles.X.gpus``, and where the engine was put at its last start (devices None: every
    GPU it sees, the engine's default; reason None: not started yet)."""
    placement = gateway.gpus.placement(name) if gateway.gpus else None
    return {
        "configured": gateway.config.roles[name].gpus,
        "devices": list(placement.devices) or None if placement else None,
        "split": list(placement.split) or None if placement else None,
        "reason": placement.reason if placement else None,
    }


def _memory(supervisor: Supervisor, name: str) -> dict[str, Any]:
    """What the scheduler plans ``name`` with: measured after a load, else configured, else
    estimated from the model file (GGUF size + KV cache)."""
    footprint = supervisor.footprint(name)
    return {
        "need_mb": supervisor.need_mb(name) or None,
        "estimated_mb": footprint.estimated_mb or None,
        "measured_mb": footprint.measured_mb or None,
        "load_seconds": footprint.load_seconds,
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
