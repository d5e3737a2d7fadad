"""The one object that holds everything long-lived: built by ``create_app``, started in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import psutil

from adapters.base import Adapter, AdapterRegistry, Probe
from adapters.connections import ENGINE_KEEPALIVE_SECONDS, PoolConnector, sibling_session
from gateway.auth import Authenticator
from gateway.config import ROLE_PREFIX, Config, Provider, Role, role_provider_name
from gateway.db import prepare as prepare_database
from gateway.engines.gate import EngineGate
from gateway.engines.kv_slots import KvCacheKeeper
from gateway.engines.process import (
    EngineDriver,
    ExternalDriver,
    HostedModelDriver,
    ModelHost,
    ProcessDriver,
    missing_parts,
)
from gateway.engines.resources import Resources
from gateway.engines.states import EngineState
from gateway.engines.supervisor import Supervisor
from gateway.forwarder import Forwarder
from gateway.keys import KeyCache, spent_by_key
from gateway.metrics import Metrics
from gateway.plugins.manager import PluginManager
from gateway.plugins.memory.backends import MemoryBackends
from gateway.plugins.memory.service import MemoryService
from gateway.plugins.tools.registry import ToolRegistry
from gateway.pricing import cost
from gateway.ratelimit import Limiter
from gateway.router import ModelTable
from gateway.targets import TargetBook
from gateway.usage import UsageRecord, UsageWriter

log = logging.getLogger("turnout")

# The adapter that speaks to each engine kind once it runs.
_ENGINE_ADAPTERS = {
    "llamacpp": "llamacpp",
    "mlx": "mlx",
    "ollama": "ollama",
    "external": "openai-compatible",
}

# Usage rows kept in memory for the dashboard's live table (GET /v1/requests/recent).
RECENT_REQUESTS = 500


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
    probes: dict[str, Probe] = field(default_factory=dict)
    forwarder: Forwarder = field(init=False)
    supervisor: Supervisor | None = None
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
    # USD spent per key with a budget (loaded from the usage log, then counted as requests end).
    spent: dict[str, float] = field(default_factory=dict)
    plugins: PluginManager = field(init=False)
    # What plugins register with register_tools (empty unless a tools plugin is enabled).
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    # What plugins register with register_memory_backends; None when none does. (Its type and
    # MemoryService are imported for real, not under TYPE_CHECKING: Litestar resolves these
    # annotations when it injects the state into a controller. Neither needs numpy.)
    memory_backends: MemoryBackends | None = None
    # The memory plugin's service once it started (the /v1/memory API and its hooks use it).
    memory: MemoryService | None = None
    # The newest usage rows, oldest first, and how many were ever appended (a polling cursor).
    recent: deque[UsageRecord] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))
    recent_count: int = 0
    _prober: asyncio.Task[None] | None = None
    _vram: Resources | None = None

    def __post_init__(self) -> None:
        # Plugins load first: their adapter kinds must be registered before providers use them.
        self.plugins = PluginManager.from_config(self.config, self.metrics)
        self.plugins.register_adapters(self.registry)
        self.models = ModelTable(self.config)
        self.book = TargetBook(self.config.routing.cooldown_seconds)
        self.providers = dict(self.config.providers)
        for name, role in self.config.roles.items():
            if role.engine in ("llamacpp", "mlx"):
                self.role_ports[name] = role.port or _free_port()
            self.providers[role_provider_name(name)] = self._role_provider(name, role)
        self.forwarder = self._forwarder(None)
        self.keys = KeyCache(self.config.server.database)
        self.auth = Authenticator(self.config.auth, self.keys)
        self.limiter = Limiter.from_config(self.config.limits, self.metrics)

    def _role_provider(self, name: str, role: Role) -> Provider:
        if name in self.role_ports:
            base_url = f"http://127.0.0.1:{self.role_ports[name]}/v1"
        else:
            base_url = role.base_url
        return Provider(kind=_ENGINE_ADAPTERS[role.engine], base_url=base_url, local=True)

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
        self.spent = await asyncio.to_thread(spent_by_key, self.config.server.database)
        for name, role in self.config.roles.items():
            problem = missing_parts(role)
            if problem:
                log.warning("role %s cannot start until fixed: %s", name, problem)
        if self.config.roles:
            self.supervisor = Supervisor(
                self.config.roles,
                self.config.engines,
                self._drivers(self.session),
                self.metrics,
                self.resources,
            )
            self.forwarder = self._forwarder(EngineGate(self.supervisor, self.config.roles))
            await self.supervisor.start()
        await self.probe_all()
        # Every plugin registers before any starts: one's startup may use another's tools.
        self.plugins.register_tools(self.tools, self)
        self.memory_backends = self.plugins.memory_backends(self)
        await self.plugins.start(self)
        # Opened last: its connection's thread would keep the process alive if a later step
        # failed and stop() never ran.
        if self.config.usage.enabled:
            self.usage = await UsageWriter.open(self.config, self.metrics)
        self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    def _drivers(self, session: aiohttp.ClientSession) -> dict[str, EngineDriver]:
        log_dir = Path(self.config.engines.log_dir or tempfile.mkdtemp(prefix="turnout-engines-"))
        keeper = self.kv_cache = KvCacheKeeper(self.config.engines.kv_cache, self.metrics)
        drivers: dict[str, EngineDriver] = {}
        for name, role in self.config.roles.items():
            if role.engine in ("llamacpp", "mlx"):

                def process(
                    extra: Sequence[str], name: str = name, role: Role = role
                ) -> EngineDriver:
                    log_path = log_dir / f"{name}.log"
                    port = self.role_ports[name]
                    return ProcessDriver(name, role, port, log_path, session, extra_args=extra)

                # Engine kinds whose adapter can save slots keep their KV cache across stops.
                adapter = self.adapters.get(role_provider_name(name))
                drivers[name] = keeper.wrap(name, role, adapter, process)
            elif role.engine == "ollama":
                # The Ollama adapter doubles as the model host: load and unload are API calls.
                host = cast(ModelHost, self.adapters[role_provider_name(name)])
                drivers[name] = HostedModelDriver(role, host)
            else:
                drivers[name] = ExternalDriver(role, session)
        keeper.refresh()
        return drivers

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
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

    def budget_left(self, key_id: str) -> float | None:
        record = self.keys.by_id(key_id)
        if record is None or record.budget_usd is None:
            return None
        return record.budget_usd - self.spent.get(key_id, 0.0)

    def record_usage(self, record: UsageRecord) -> None:
        """Count what a request cost a key with a budget, then hand the row to the writer.

        Other rows are priced by the writer, off the request path.
        """
        key_id = record.key_id
        if key_id is not None and self.config.prices and self.budget_left(key_id) is not None:
            record.cost_usd = cost(
                self.config.prices,
                record.model,
                record.upstream_model,
                record.prompt_tokens,
                record.completion_tokens,
                record.cached_tokens,
            )
            if record.cost_usd:
                self.spent[key_id] = self.spent.get(key_id, 0.0) + record.cost_usd
        self.recent.append(record)
        self.recent_count += 1
        if self.usage is not None:
            self.usage.submit(record)

    def resources(self) -> Resources:
        """Free memory now: RAM is cheap to read on every decision; VRAM comes from the prober."""
        memory = psutil.virtual_memory()
        vram = self._vram
        return Resources(
            ram_free_mb=memory.available // 2**20,
            ram_total_mb=memory.total // 2**20,
            vram_free_mb=vram.vram_free_mb if vram else None,
            vram_total_mb=vram.vram_total_mb if vram else None,
        )

    async def probe_all(self) -> None:
        names = [n for n in self.adapters if not n.startswith(ROLE_PREFIX)]
        results = await asyncio.gather(*(self.adapters[n].probe() for n in names))
        for name, probe in zip(names, results, strict=True):
            previous = self.probes.get(name)
            if previous is None or previous.available != probe.available:
                level = logging.INFO if probe.available else logging.WARNING
                state = "available" if probe.available else "unavailable"
                log.log(level, "provider %s %s: %s", name, state, probe.detail)
            self.probes[name] = probe
            self.metrics.child(self.metrics.provider_up, name).set(1 if probe.available else 0)
        if self.config.roles:
            from gateway.engines.resources import read_resources

            self._vram = await read_resources()

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.server.probe_seconds)
            try:
                await self.probe_all()
            except Exception:
                log.exception("provider probe failed")

    def availability(self, provider: str) -> Probe:
        """Whether a provider can take requests now, and why not."""
        if provider.startswith(ROLE_PREFIX) and self.supervisor is not None:
            role = provider[len(ROLE_PREFIX) :]
            status = self.supervisor.status(role)
            if status.state is EngineState.FAILED:
                return Probe(False, f"local role {role} failed: {status.last_error}")
            problem = missing_parts(self.config.roles[role])
            if problem and status.state is not EngineState.READY:
                return Probe(False, f"local role {role} cannot start: {problem}")
            return Probe(True, f"local role {role}: {status.state}; loads on demand")
        return self.probes.get(provider) or Probe(False, "not probed yet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
