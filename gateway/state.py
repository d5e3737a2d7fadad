"""The one object that holds everything long-lived: built by ``create_app``, started in the lifespan.

A container: policy lives in the modules of what it holds (budgets, probes, the recent-requests
ring, the engine supervisor). Each field is set once, here or in ``start()``, never swapped.
Plugins see it through ``gateway.plugins.context.Gateway`` and never import it.
"""

from __future__ import annotations

import logging
import random
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from adapters.base import Adapter, AdapterRegistry, Probe
from adapters.connections import ENGINE_KEEPALIVE_SECONDS, PoolConnector, sibling_session
from gateway.auth import Authenticator
from gateway.budget import Budgets
from gateway.config import Config, Provider, Role, role_provider_name
from gateway.db import prepare as prepare_database
from gateway.engines.gate import EngineGate
from gateway.engines.kinds import DriverContext, EngineKinds
from gateway.engines.kv_slots import KvCacheKeeper
from gateway.engines.process import EngineDriver
from gateway.engines.supervisor import Supervisor
from gateway.errors import ConfigError
from gateway.forwarder import Forwarder
from gateway.keys import KeyCache
from gateway.metrics import Metrics
from gateway.plugins.manager import PluginManager
from gateway.probes import Prober
from gateway.ratelimit.limiter import Limiter
from gateway.recent import RecentRequests
from gateway.router import ModelTable
from gateway.targets import TargetBook
from gateway.usage import UsageRecord, UsageWriter

log = logging.getLogger("turnout")


@dataclass
class GatewayState:
    config: Config
    registry: AdapterRegistry
    metrics: Metrics = field(default_factory=Metrics)
    models: ModelTable = field(init=False)
    book: TargetBook = field(init=False)
    # Configured providers plus one per local role (``role:<name>``).
    providers: dict[str, Provider] = field(init=False)
    role_ports: dict[str, int] = field(default_factory=dict)
    adapters: dict[str, Adapter] = field(default_factory=dict)
    prober: Prober = field(init=False)
    # Built once in start(), behind the engine gate when there are local roles.
    forwarder: Forwarder = field(init=False)
    supervisor: Supervisor | None = None
    # The engine kinds roles may name: the built-in ones and what plugins register.
    engine_kinds: EngineKinds = field(default_factory=EngineKinds)
    # KV caches kept across swaps (engines.kv_cache); None without local roles.
    kv_cache: KvCacheKeeper | None = None
    session: aiohttp.ClientSession | None = None
    # Local providers' adapters: the same settings, a shorter keep-alive (see start()).
    engine_session: aiohttp.ClientSession | None = None
    # The usage log; None when ``usage.enabled`` is false.
    usage: UsageWriter | None = None
    keys: KeyCache = field(init=False)
    auth: Authenticator = field(init=False)
    limiter: Limiter = field(init=False)
    budgets: Budgets = field(init=False)
    plugins: PluginManager = field(init=False)
    # The dashboard's live table.
    recent: RecentRequests = field(default_factory=RecentRequests)

    def __post_init__(self) -> None:
        # Plugins load first: their adapter kinds must be registered before providers use them.
        self.plugins = PluginManager.from_config(self.config, self.metrics)
        self.plugins.register_adapters(self.registry)
        # Engine kinds too (the built-in ones through the same hook), before roles use them.
        self.plugins.register_engine_kinds(self.engine_kinds)
        problems = self.engine_kinds.role_problems(self.config.roles)
        if problems:
            raise ConfigError("; ".join(problems))
        self.models = ModelTable(self.config)
        self.book = TargetBook(self.config.routing.cooldown_seconds)
        self.providers = dict(self.config.providers)
        for name, role in self.config.roles.items():
            if self.engine_kinds.of(role).spawns:
                self.role_ports[name] = role.port or _free_port()
            self.providers[role_provider_name(name)] = self._role_provider(name, role)
        self.keys = KeyCache(self.config.server.database)
        self.auth = Authenticator(self.config.auth, self.keys)
        self.limiter = Limiter.from_config(self.config.limits, self.metrics)
        self.budgets = Budgets(self.keys, self.config.prices)
        self.prober = Prober(
            self.adapters,
            self.metrics,
            self.config.roles,
            self.engine_kinds.missing_parts,
            self.config.server.probe_seconds,
        )

    def _role_provider(self, name: str, role: Role) -> Provider:
        if name in self.role_ports:
            base_url = f"http://127.0.0.1:{self.role_ports[name]}/v1"
        else:
            base_url = role.base_url
        kind = self.engine_kinds.of(role).adapter
        return Provider(kind=kind, base_url=base_url, local=True)

    def _forwarder(self, gate: EngineGate | None) -> Forwarder:
        return Forwarder(
            self.config.routing,
            self.providers,
            self.adapters,
            self.book,
            self.metrics,
            random.Random(),
            gate,
        )

    async def start(self) -> None:
        # One pooled session for every upstream: keep-alive connections are the biggest single
        # win on the hot path. No per-host limit: a slow local engine must not starve others.
        # PoolConnector notes reused connections, so one the upstream closed is resent.
        connector = PoolConnector(
            limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60
        )
        # aiohttp offers "gzip, deflate" unless told otherwise, and an upstream that took the
        # offer had its compressed bytes relayed raw. Ask for identity on every call (chat,
        # probes, engine health); one that compresses anyway is decoded (gzip, deflate: a
        # no-op cost without Content-Encoding), and any other coding fails as a protocol
        # error before the answer is committed, so the next target is tried.
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"Accept-Encoding": "identity"},
            skip_auto_headers=("User-Agent",),
        )
        # Local engines close idle connections after a few seconds (llama-server: 5): their
        # adapters get the same session settings over a pool that lets go of them sooner.
        self.engine_session = sibling_session(self.session, ENGINE_KEEPALIVE_SECONDS)
        for name, provider in self.providers.items():
            session = self.engine_session if provider.is_local else self.session
            self.adapters[name] = self.registry.create(name, provider, session)
        await prepare_database(self.config.server.database)
        await self.keys.start()
        await self.limiter.start()
        await self.budgets.load(self.config.server.database)
        for name, role in self.config.roles.items():
            problem = self.engine_kinds.missing_parts(role)
            if problem:
                log.warning("role %s cannot start until fixed: %s", name, problem)
        gate = None
        if self.config.roles:
            self.supervisor = Supervisor(
                self.config.roles,
                self.config.engines,
                self._drivers(self.session),
                self.metrics,
                self.prober.resources,
                unmanaged=self.engine_kinds.unmanaged(self.config.roles),
            )
            gate = EngineGate(self.supervisor, self.config.roles)
        self.forwarder = self._forwarder(gate)
        if self.supervisor is not None:
            await self.supervisor.start()
        await self.prober.probe_all()
        await self.plugins.start(self)
        # Opened last: its connection's thread would keep the process alive if a later step
        # failed and stop() never ran.
        if self.config.usage.enabled:
            self.usage = await UsageWriter.open(self.config, self.metrics)
        self.prober.start()

    def _drivers(self, session: aiohttp.ClientSession) -> dict[str, EngineDriver]:
        log_dir = Path(self.config.engines.log_dir or tempfile.mkdtemp(prefix="turnout-engines-"))
        keeper = self.kv_cache = KvCacheKeeper(self.config.engines.kv_cache, self.metrics)
        drivers: dict[str, EngineDriver] = {}
        for name, role in self.config.roles.items():
            kind = self.engine_kinds.of(role)
            drivers[name] = kind.driver(
                DriverContext(
                    name,
                    role,
                    kind,
                    self.role_ports.get(name, 0),
                    log_dir / f"{name}.log",
                    session,
                    self.adapters.get(role_provider_name(name)),
                    keeper,
                )
            )
        keeper.refresh()
        return drivers

    async def stop(self) -> None:
        await self.prober.stop()
        # First: pending after_response work may still need the session, adapters and engines.
        await self.plugins.stop(self)
        if self.supervisor is not None:
            await self.supervisor.stop()
        for adapter in self.adapters.values():
            await adapter.close()
        if self.session is not None:
            await self.session.close()
        if self.engine_session is not None:
            await self.engine_session.close()
        await self.keys.stop()
        await self.limiter.close()
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
