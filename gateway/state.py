"""The gateway's long-lived objects: derived from the config by ``create_app``, opened whole in
the lifespan.

Two steps, two types. ``Wiring`` is what ``create_app`` builds from the config alone, before
anything opens: the plugins (their routes are mounted with the app), the metrics, the model
table, keys, auth, limits and budgets, and with them the checks that must fail before the
server starts. ``GatewayState`` is the running gateway: those parts plus what opens (sessions,
adapters, engines, the forwarder, the usage log), built whole by ``GatewayState.open`` in the
lifespan, every field set when it exists and never swapped, torn down by ``close()``.

A container: policy lives in the modules of what it holds (budgets, probes, the recent-requests
ring, the engine supervisor). Plugins see it through ``gateway.plugins.context.Gateway`` and
never import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from adapters.base import Adapter, AdapterRegistry, Probe
from adapters.connections import PoolConnector, sibling_session
from adapters.keepalive import ENGINE_KEEPALIVE_SECONDS
from gateway.auth import Authenticator
from gateway.budget import Budgets
from gateway.captures.ring import Captures
from gateway.config.roles import role_provider_name
from gateway.config.schema import Config
from gateway.config.upstreams import Provider
from gateway.db import prepare as prepare_database
from gateway.dialect import machine_local
from gateway.engines.engine_metrics import EngineMetrics, metrics_urls
from gateway.engines.gate import EngineGate
from gateway.engines.gpus import GpuPlacer
from gateway.engines.kinds import DriverContext, EngineKinds
from gateway.engines.kv_slots import KvCacheKeeper
from gateway.engines.process import EngineDriver
from gateway.engines.states import EngineState
from gateway.engines.supervisor import Supervisor
from gateway.errors import ConfigError
from gateway.forwarder import Forwarder
from gateway.keys import KeyCache
from gateway.metrics import Metrics
from gateway.peers.fleet import Fleet, supervisor_view
from gateway.plugins.manager import PluginManager
from gateway.probes import Prober
from gateway.ratelimit.limiter import Limiter
from gateway.recent import RecentRequests
from gateway.responses_store.store import ResponseStore
from gateway.router import ModelTable
from gateway.targets import TargetBook
from gateway.telemetry.tracer import Tracer, open_tracer
from gateway.translate.prefix import request_shapers
from gateway.usage import UsageRecord, UsageWriter

log = logging.getLogger("turnout")


@dataclass(frozen=True, slots=True)
class Wiring:
    """What ``create_app`` derives from the config: nothing here opens a file or a socket, and
    a config these cannot take fails here, before the server starts."""

    config: Config
    # With the plugins' adapter kinds registered.
    registry: AdapterRegistry
    metrics: Metrics
    plugins: PluginManager
    # The engine kinds roles may name: the built-in ones and what plugins register.
    engine_kinds: EngineKinds
    models: ModelTable
    keys: KeyCache
    auth: Authenticator
    limiter: Limiter
    budgets: Budgets
    # The dashboard's live table.
    recent: RecentRequests

    @classmethod
    def of(cls, config: Config, registry: AdapterRegistry) -> Wiring:
        metrics = Metrics()
        # Plugins load first: their adapter kinds must be registered before providers use them.
        plugins = PluginManager.from_config(config, metrics)
        plugins.register_adapters(registry)
        # Engine kinds too (the built-in ones through the same hook), before roles use them.
        kinds = EngineKinds()
        plugins.register_engine_kinds(kinds)
        problems = registry.problems(config.providers) + kinds.role_problems(config.roles)
        if problems:
            raise ConfigError("; ".join(problems))
        keys = KeyCache(config.server.database)
        return cls(
            config=config,
            registry=registry,
            metrics=metrics,
            plugins=plugins,
            engine_kinds=kinds,
            models=ModelTable(config),
            keys=keys,
            auth=Authenticator(config.auth, keys),
            limiter=Limiter.from_config(config.limits, metrics),
            budgets=Budgets(keys, config.prices),
            recent=RecentRequests(),
        )


@dataclass(frozen=True, slots=True)
class GatewayState:
    """The running gateway. Built only by ``open()``; the request path reads its fields."""

    config: Config
    metrics: Metrics
    models: ModelTable
    plugins: PluginManager
    engine_kinds: EngineKinds
    # Configured providers plus one per local role (``role:<name>``).
    providers: dict[str, Provider]
    # The port of each local role whose engine turnout spawns.
    role_ports: dict[str, int]
    session: aiohttp.ClientSession
    # Local providers' adapters: the same settings, a shorter keep-alive (see _sessions()).
    engine_session: aiohttp.ClientSession
    adapters: dict[str, Adapter]
    book: TargetBook
    prober: Prober
    # None without local roles; the forwarder reaches it through the engine gate.
    supervisor: Supervisor | None
    # KV caches kept across swaps (engines.kv_cache); None without local roles.
    kv_cache: KvCacheKeeper | None
    forwarder: Forwarder
    keys: KeyCache
    auth: Authenticator
    limiter: Limiter
    budgets: Budgets
    # The usage log; None when ``usage.enabled`` is false.
    usage: UsageWriter | None
    # The dashboard's live table.
    recent: RecentRequests
    # Where each spawned role's engine was put (GPUs); None without local roles.
    gpus: GpuPlacer | None
    # The engines' own metrics on /metrics (by role); None when no role's engine has any.
    engine_metrics: EngineMetrics | None
    # OpenTelemetry spans per request, and the debugging captures: None when off (the default).
    tracer: Tracer | None = None
    captures: Captures | None = None
    # Stored Responses (store: true); None when ``responses.store`` is false.
    responses: ResponseStore | None = None
    # Other turnouts routed to (peers:); None without any.
    fleet: Fleet | None = None

    @classmethod
    async def open(cls, wiring: Wiring) -> GatewayState:
        """The gateway, built and started; a start that fails closes what it opened."""
        state = await _build(wiring)
        try:
            await state._start()
        except BaseException:
            await state.close()
            raise
        return state

    async def _start(self) -> None:
        await self.keys.start()
        await self.limiter.start()
        await self.budgets.load(self.config.server.database)
        if self.responses is not None:
            await self.responses.start()
        if self.supervisor is not None:
            await self.supervisor.start()
        if self.fleet is not None:
            await self.fleet.start()
        if self.engine_metrics is not None:
            self.metrics.registry.register(self.engine_metrics)
        await self.prober.probe_all()
        await self.plugins.start(self)
        self.prober.start()

    async def close(self) -> None:
        await self.prober.stop()
        if self.engine_metrics is not None:
            # The registry outlives this state (it is the Wiring's): a reopened gateway
            # registers its own.
            with contextlib.suppress(KeyError):
                self.metrics.registry.unregister(self.engine_metrics)
        # First: pending after_response work may still need the session, adapters and engines.
        await self.plugins.stop(self)
        if self.fleet is not None:
            await self.fleet.close()
        if self.supervisor is not None:
            await self.supervisor.stop()
        for adapter in self.adapters.values():
            await adapter.close()
        await self.session.close()
        await self.engine_session.close()
        await self.keys.stop()
        await self.limiter.close()
        await self.budgets.close()
        # Late, so spans of requests that finished while everything else stopped are sent.
        if self.tracer is not None:
            await self.tracer.close()
        if self.responses is not None:
            await self.responses.stop()
        # Last, so rows from requests that finished while everything else stopped are written.
        if self.usage is not None:
            await self.usage.stop()

    def record_usage(self, record: UsageRecord) -> None:
        """Charges a key with a budget, shows the row on the dashboard, hands it to the writer."""
        self.budgets.charge(record)
        self.recent.append(record)
        if self.usage is not None:
            self.usage.submit(record)

    def availability(self, provider: str) -> Probe:
        """Whether a provider can take requests now, and why not."""
        return self.prober.availability(provider, self.supervisor)


async def _build(wiring: Wiring) -> GatewayState:
    """Every part of the gateway, opened but not started (``GatewayState._start``)."""
    config, metrics = wiring.config, wiring.metrics
    await prepare_database(config.server.database)
    role_ports, providers = _providers(config, wiring.engine_kinds)
    session, engine_session = _sessions()
    adapters = {
        name: wiring.registry.create(name, p, engine_session if p.is_local else session)
        for name, p in providers.items()
    }
    prober = Prober(
        adapters,
        metrics,
        config.roles,
        wiring.engine_kinds.missing_parts,
        config.server.probe_seconds,
    )
    # Drivers reach their engines through the engine pool too: one pool to empty before a stop.
    supervisor, kv_cache, placer = _engines(wiring, role_ports, adapters, engine_session, prober)
    gate = EngineGate(supervisor, config.roles) if supervisor is not None else None
    book = TargetBook(config.routing.cooldown_seconds)
    shapers = request_shapers(providers, wiring.registry.keeps_client_prefix)
    fleet = (
        Fleet(config.peers, config.models, book, supervisor_view(supervisor))
        if config.peers
        else None
    )
    forwarder = Forwarder(
        config.routing, providers, adapters, book, metrics, random.Random(), gate, shapers, fleet
    )
    events = supervisor.events if supervisor is not None else None
    tracer = open_tracer(config.telemetry, os.environ, providers, events, os.cpu_count())
    return GatewayState(
        config=config,
        metrics=metrics,
        models=wiring.models,
        plugins=wiring.plugins,
        engine_kinds=wiring.engine_kinds,
        providers=providers,
        role_ports=role_ports,
        session=session,
        engine_session=engine_session,
        adapters=adapters,
        book=book,
        prober=prober,
        supervisor=supervisor,
        kv_cache=kv_cache,
        forwarder=forwarder,
        keys=wiring.keys,
        auth=wiring.auth,
        limiter=wiring.limiter,
        budgets=wiring.budgets,
        # Opened last: its connection's thread would keep the process alive if a step before
        # it failed; from here on, a failure closes the whole state (open()).
        usage=await UsageWriter.open(config, metrics) if config.usage.enabled else None,
        recent=wiring.recent,
        gpus=placer,
        engine_metrics=_engine_metrics(wiring, providers, supervisor, engine_session),
        tracer=tracer,
        captures=Captures.of(config) if config.capture.enabled else None,
        fleet=fleet,
        responses=(
            # Shared by replicas on PostgreSQL (gateway/responses_store/postgres.py).
            ResponseStore(config.responses, config.server.database, metrics.responses_dropped)
            if config.responses.store
            else None
        ),
    )


def _providers(config: Config, kinds: EngineKinds) -> tuple[dict[str, int], dict[str, Provider]]:
    """Each spawned role's port, and the providers: the configured ones plus one per role."""
    role_ports: dict[str, int] = {}
    providers = dict(config.providers)
    for name, role in config.roles.items():
        kind = kinds.of(role)
        if kind.spawns:
            role_ports[name] = role.port or _free_port()
            base_url = f"http://127.0.0.1:{role_ports[name]}/v1"
        else:
            base_url = role.base_url
        providers[role_provider_name(name)] = Provider(
            kind=kind.adapter, base_url=base_url, local=True, reasoning=role.reasoning
        )
    return role_ports, providers


def _engine_metrics(
    wiring: Wiring,
    providers: dict[str, Provider],
    supervisor: Supervisor | None,
    session: aiohttp.ClientSession,
) -> EngineMetrics | None:
    """The engines' own metrics, read when /metrics is scraped (only ready roles are asked)."""
    roles = wiring.config.roles
    base_urls = {name: providers[role_provider_name(name)].base_url for name in roles}
    urls = metrics_urls(roles, wiring.engine_kinds, base_urls)
    if supervisor is None or not urls:
        return None
    return EngineMetrics(
        urls, lambda name: supervisor.status(name).state is EngineState.READY, session
    )


def _sessions() -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
    """The upstream session, and the local engines' sibling of it."""
    # One pooled session for every upstream: keep-alive connections are the biggest single
    # win on the hot path. No per-host limit: a slow local engine must not starve others.
    # PoolConnector notes reused connections, so one the upstream closed is resent.
    connector = PoolConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
    # aiohttp offers "gzip, deflate" unless told otherwise, and an upstream that took the
    # offer had its compressed bytes relayed raw. Ask for identity on every call (chat,
    # probes, engine health); one that compresses anyway is decoded (gzip, deflate: a
    # no-op cost without Content-Encoding), and any other coding fails as a protocol
    # error before the answer is committed, so the next target is tried.
    session = aiohttp.ClientSession(
        connector=connector,
        headers={"Accept-Encoding": "identity"},
        skip_auto_headers=("User-Agent",),
    )
    # Local engines close idle connections after a few seconds (llama-server: 5): their
    # adapters get the same session settings over a pool that lets go of them sooner.
    return session, sibling_session(session, ENGINE_KEEPALIVE_SECONDS)


def _engines(
    wiring: Wiring,
    role_ports: dict[str, int],
    adapters: dict[str, Adapter],
    session: aiohttp.ClientSession,
    prober: Prober,
) -> tuple[Supervisor | None, KvCacheKeeper | None, GpuPlacer | None]:
    """The engine supervisor, the KV-cache keeper and the GPU placer: None without local roles."""
    config, kinds = wiring.config, wiring.engine_kinds
    for name, role in config.roles.items():
        problem = kinds.missing_parts(role)
        if problem:
            log.warning("role %s cannot start until fixed: %s", name, problem)
    if not config.roles:
        return None, None, None
    keeper = KvCacheKeeper(config.engines.kv_cache, wiring.metrics)
    # Placement asks the supervisor, built next from the drivers, what each role needs: the
    # lambda reads ``supervisor`` only when an engine starts, long after it is assigned.
    placer = GpuPlacer(lambda role: supervisor.need_mb(role))
    supervisor = Supervisor(
        config.roles,
        config.engines,
        _drivers(wiring, role_ports, adapters, session, keeper, placer),
        wiring.metrics,
        prober.resources,
        unmanaged=kinds.unmanaged(config.roles),
        database=machine_local(config.server.database),
    )
    return supervisor, keeper, placer


def _drivers(
    wiring: Wiring,
    role_ports: dict[str, int],
    adapters: dict[str, Adapter],
    session: aiohttp.ClientSession,
    keeper: KvCacheKeeper,
    placer: GpuPlacer,
) -> dict[str, EngineDriver]:
    config = wiring.config
    log_dir = Path(config.engines.log_dir or tempfile.mkdtemp(prefix="turnout-engines-"))
    drivers: dict[str, EngineDriver] = {}
    for name, role in config.roles.items():
        kind = wiring.engine_kinds.of(role)
        drivers[name] = kind.driver(
            DriverContext(
                name,
                role,
                kind,
                role_ports.get(name, 0),
                log_dir / f"{name}.log",
                session,
                adapters.get(role_provider_name(name)),
                keeper,
                placer,
            )
        )
    keeper.refresh()
    return drivers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
