"""The memory plugin's hooks (entry point ``memory = gateway.plugins.memory.plugin``).

``register_memory_backends`` adds the ``sqlite-vec`` backend; ``startup`` opens the backend
``memory.backend`` names and the embedder, and hangs the service off the gateway's state
(``state.memory``), where the HTTP API and the request hooks find it. Nothing is kept here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.config import Config
from gateway.plugins.context import Exchanged, PluginContext, RequestContext
from gateway.plugins.hookspecs import hookimpl
from gateway.plugins.memory.auto import recall, remember
from gateway.plugins.memory.backends import MemoryBackends
from gateway.plugins.memory.embeddings import embedder_for
from gateway.plugins.memory.service import MemoryMetrics, MemoryService
from gateway.plugins.memory.store import SqliteVecStore
from gateway.plugins.memory.summary import GatewayChat

log = logging.getLogger("turnout.memory")


def database_path(config: Config) -> str:
    """``memory.database``, else a file beside ``server.database`` (turnout-memory.db)."""
    if config.memory.database:
        return config.memory.database
    server = config.server.database
    if server == ":memory:" or server.startswith("file:"):
        return ":memory:"
    path = Path(server)
    return str(path.with_name(f"{path.stem}-memory{path.suffix or '.db'}"))


@hookimpl
def register_memory_backends(backends: MemoryBackends) -> None:
    backends.add("sqlite-vec", SqliteVecStore.create)


@hookimpl
async def startup(context: PluginContext) -> None:
    state = context.state
    settings = state.config.memory
    database = database_path(state.config)
    backends = state.memory_backends
    if backends is None:  # the manager fills it before startup, this plugin registering
        raise RuntimeError("memory: no memory backends were registered")
    service = MemoryService(
        settings,
        backends.create(settings.backend, settings, database),
        embedder_for(state, settings.embeddings),
        GatewayChat(state),
        MemoryMetrics(state.metrics.registry),
    )
    await service.start()
    state.memory = service
    log.info(
        "memory: %s backend at %s, embeddings from %s",
        settings.backend,
        database,
        service.embedder.name,
    )


@hookimpl
async def shutdown(context: PluginContext) -> None:
    service, context.state.memory = context.state.memory, None
    if service is not None:
        await service.close(context.state.config.plugins.shutdown_grace_seconds)


@hookimpl
async def before_upstream(request: RequestContext) -> None:
    service = request.state.memory
    if service is not None:
        await recall(service, request)


@hookimpl
async def after_response(request: RequestContext, exchanged: Exchanged) -> None:
    service = request.state.memory
    if service is not None:
        await remember(service, request, exchanged)
