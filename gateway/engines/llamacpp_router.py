"""llama.cpp's router mode as an engine kind: one llama-server holding several models.

``llama-server --models-dir DIR`` (or ``--models-preset FILE.ini``), started without a model,
serves every GGUF it finds, each in a child process of its own, loaded and unloaded on request
(llama.cpp ``tools/server/README.md``, "router mode"):

- ``GET /models`` -> ``{"data": [{"id": ..., "status": {"value": "unloaded" | "loading" |
  "loaded" | "sleeping" | "downloading", "failed": true, "exit_code": 1}}]}``;
- ``POST /models/load`` and ``POST /models/unload`` with ``{"model": id}`` -> ``{"success": true}``;
- a chat request names its model in ``model`` and the router forwards it to that child.

Each role of this kind is one model of such a router (``roles.X.model``: its id in
``/models``); like Ollama, the router runs outside turnout and ``base_url`` names it. turnout
decides what is loaded: a start is a load, a stop an unload, so eviction, groups, memory
budgets and TTLs work as for any role. Start the router with ``--no-models-autoload`` (a request
for a model turnout has not loaded then fails instead of loading behind its back) and
``--models-max 0`` (turnout, not the router's own LRU, decides what to unload).

Registered through ``register_engine_kinds`` like any plugin's kind (see ``builtin.collect``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from gateway.config.engines import Role
from gateway.engines.kinds import DriverContext, EngineKind, EngineKinds
from gateway.engines.process import EngineDriver, HostedModelDriver
from gateway.errors import EngineStartError
from gateway.plugins.hookspecs import hookimpl

POLL_SECONDS = 0.05
# Statuses in which the router serves the model: a sleeping child wakes on its next request.
SERVING = frozenset({"loaded", "sleeping"})


class RouterModels:
    """A router's model endpoints, as the model host the hosted-model driver loads through."""

    def __init__(self, role: Role, session: aiohttp.ClientSession) -> None:
        base = role.base_url.rstrip("/")
        self._origin = base[: -len("/v1")] if base.endswith("/v1") else base
        self._session = session
        self._stop_seconds = role.stop_timeout_seconds

    async def load(self, model: str, keep_alive: str | int | None = None) -> None:
        """Load ``model`` and return once the router serves it (the caller bounds the wait)."""
        if _value(await self.status(model)) in SERVING:
            return
        try:
            await self._post("/models/load", model)
        except EngineStartError:
            # 400 "model is already running" when it was loaded meanwhile: fine if it serves.
            if _value(await self.status(model)) not in SERVING | {"loading"}:
                raise
        while True:
            status = await self.status(model)
            value = _value(status)
            if value in SERVING:
                return
            if value == "unloaded" and status.get("failed"):
                raise EngineStartError(
                    f"the router could not load {model!r} (its child exited with code "
                    f"{status.get('exit_code')})",
                    status.get("exit_code") if isinstance(status.get("exit_code"), int) else None,
                )
            await asyncio.sleep(POLL_SECONDS)

    async def unload(self, model: str) -> None:
        """Unload ``model`` and wait until the router says so: until then its memory is held."""
        async with asyncio.timeout(self._stop_seconds):
            await self._post("/models/unload", model)
            await self._until(model, lambda value: value in ("unloaded", ""))

    async def _until(self, model: str, done: Callable[[str], bool]) -> None:
        # Polled: the router's /models/sse would push it, but one GET per 50 ms is simpler.
        while True:
            if done(_value(await self.status(model))):
                return
            await asyncio.sleep(POLL_SECONDS)

    async def status(self, model: str) -> dict[str, Any]:
        """The router's ``status`` object for ``model``; an error when it has no such model."""
        async with self._session.get(self._origin + "/models", timeout=self._timeout()) as reply:
            body = await reply.json(content_type=None)
        entries = body.get("data") if isinstance(body, dict) else None
        if reply.status != 200 or not isinstance(entries, list):
            raise EngineStartError(f"the router's /models answered HTTP {reply.status}")
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") == model:
                status = entry.get("status")
                return status if isinstance(status, dict) else {}
        known = ", ".join(str(e.get("id")) for e in entries if isinstance(e, dict))
        raise EngineStartError(f"the router has no model {model!r} (it has: {known or 'none'})")

    async def _post(self, path: str, model: str) -> None:
        async with self._session.post(
            self._origin + path, json={"model": model}, timeout=self._timeout()
        ) as reply:
            text = await reply.text()
        if reply.status != 200:
            raise EngineStartError(
                f"the router's {path} answered HTTP {reply.status}: {text[:200]}"
            )

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=max(2.0, self._stop_seconds))


def _value(status: dict[str, Any]) -> str:
    value = status.get("value")
    return value if isinstance(value, str) else ""


def router_driver(context: DriverContext) -> EngineDriver:
    return HostedModelDriver(context.role, RouterModels(context.role, context.session))


LLAMACPP_ROUTER = EngineKind(
    name="llamacpp-router",
    # The router forwards each request to its model's own llama-server, quirks and all.
    adapter="llamacpp",
    driver=router_driver,
    base_url="required",
)


@hookimpl
def register_engine_kinds(kinds: EngineKinds) -> None:
    kinds.register(LLAMACPP_ROUTER)
