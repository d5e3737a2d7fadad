"""The memory plugin (entry point ``memory = gateway.plugins.memory.plugin:MemoryPlugin``).

One instance per gateway owns the service. ``register_memory_backends`` adds the
``sqlite-vec`` and ``postgresql`` backends; ``startup`` lets every plugin register its
backends, then opens the backend ``memory.backend`` names (``auto``: settings.py's
``backend_of``) and the embedder; the HTTP API (``register_routes``) and the request hooks use
the service from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from litestar import Router
from litestar.di import Provide
from litestar.types import ControllerRouterHandler

from gateway.config.schema import Config
from gateway.db import creation_problem
from gateway.dialect import is_postgres, redacted
from gateway.errors import DriverError, NotFound
from gateway.plugins.context import Exchanged, PluginContext, RequestContext
from gateway.plugins.hookspecs import hookimpl
from gateway.plugins.memory import hookspecs as memory_hookspecs
from gateway.plugins.memory.api import memory_controllers
from gateway.plugins.memory.auto import recall, remember
from gateway.plugins.memory.backends import MemoryBackends
from gateway.plugins.memory.driver import extension_path
from gateway.plugins.memory.embeddings import embedder_for, missing_parts
from gateway.plugins.memory.postgres_store import PostgresStore
from gateway.plugins.memory.service import MemoryMetrics, MemoryService
from gateway.plugins.memory.settings import (
    POSTGRESQL,
    SQLITE_VEC,
    backend_of,
    database_path,
    section_problems,
    settings_of,
)
from gateway.plugins.memory.store import SqliteVecStore
from gateway.plugins.memory.summary import GatewayChat

log = logging.getLogger("turnout.memory")


class MemoryPlugin:
    # Its own hook (register_memory_backends), for other plugins to implement.
    turnout_hookspecs = memory_hookspecs

    def __init__(self) -> None:
        self.service: MemoryService | None = None

    @hookimpl
    def check_config(self, config: Config) -> list[str]:
        return section_problems(config, settings_of(config))

    @hookimpl
    def check_startup(self, config: Config, collect: Callable[..., bool]) -> list[str]:
        settings = settings_of(config)
        problems = [
            missing_parts(settings.embeddings),
            creation_problem("memory.database", database_path(config)),
        ]
        # The backends every enabled plugin registers, as startup will collect them; when one
        # registers only with the running gateway (context), an unknown name is left to startup.
        backends = MemoryBackends()
        if collect("register_memory_backends", backends=backends):
            problems.append(backends.problem(backend_of(config)))
        if backend_of(config) == SQLITE_VEC:
            try:
                extension_path()
            except DriverError as exc:
                problems.append(str(exc))
        return [problem for problem in problems if problem]

    @hookimpl
    def register_routes(self) -> Sequence[ControllerRouterHandler]:
        # A closure, not a bound method: Litestar deep-copies its handlers' dependencies, and
        # a copied method would carry a copy of this plugin.
        def service() -> MemoryService:
            if self.service is None:  # before startup, or after shutdown
                raise NotFound("memory is off: add memory to plugins.enabled in routing.yaml")
            return self.service

        provide = Provide(service, sync_to_thread=False)
        return [Router("/", route_handlers=memory_controllers(), dependencies={"memory": provide})]

    @hookimpl
    def register_memory_backends(self, backends: MemoryBackends) -> None:
        backends.add(SQLITE_VEC, SqliteVecStore.create)
        backends.add(POSTGRESQL, PostgresStore.create)

    @hookimpl
    async def startup(self, context: PluginContext) -> None:
        state = context.state
        settings = settings_of(state.config)
        backend, database = backend_of(state.config), database_path(state.config)
        if backend == SQLITE_VEC and is_postgres(state.config.server.database):
            log.warning(
                "memory: memory.backend is sqlite-vec while server.database is PostgreSQL: "
                "this replica keeps its own memories in %s, which other replicas do not see "
                "(memory.backend: auto or postgresql shares them)",
                database,
            )
        backends = MemoryBackends()
        context.collect("register_memory_backends", backends=backends)
        service = MemoryService(
            settings,
            backends.create(backend, settings, database),
            embedder_for(state, settings.embeddings),
            GatewayChat(state),
            MemoryMetrics(state.metrics.registry),
        )
        await service.start()
        self.service = service
        log.info(
            "memory: %s backend at %s, embeddings from %s",
            backend,
            redacted(database),
            service.embedder.name,
        )

    @hookimpl
    async def shutdown(self, context: PluginContext) -> None:
        service, self.service = self.service, None
        if service is not None:
            await service.close(context.state.config.plugins.shutdown_grace_seconds)

    @hookimpl
    async def before_upstream(self, request: RequestContext) -> None:
        service = self.service
        if service is not None:
            await recall(service, request)

    @hookimpl
    async def after_response(self, request: RequestContext, exchanged: Exchanged) -> None:
        service = self.service
        if service is not None:
            await remember(service, request, exchanged)
