"""The one object that holds everything long-lived: built by ``create_app``, started in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import aiohttp

from adapters.base import Adapter, AdapterRegistry, Probe
from gateway.config import Config
from gateway.forwarder import Forwarder
from gateway.metrics import Metrics
from gateway.router import ModelTable
from gateway.targets import TargetBook

log = logging.getLogger("turnout")


@dataclass
class GatewayState:
    config: Config
    registry: AdapterRegistry
    metrics: Metrics = field(default_factory=Metrics)
    models: ModelTable = field(init=False)
    book: TargetBook = field(init=False)
    adapters: dict[str, Adapter] = field(default_factory=dict)
    probes: dict[str, Probe] = field(default_factory=dict)
    forwarder: Forwarder = field(init=False)
    session: aiohttp.ClientSession | None = None
    _prober: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.models = ModelTable(self.config)
        self.book = TargetBook(self.config.routing.cooldown_seconds)
        self.forwarder = Forwarder(
            self.config.routing,
            self.config.providers,
            self.adapters,
            self.book,
            self.metrics,
            random.Random(),
        )

    async def start(self) -> None:
        # One pooled session for every upstream: keep-alive connections are the biggest single
        # win on the hot path. No per-host limit: a slow local engine must not starve others.
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            # Upstream bodies are forwarded as bytes; never let aiohttp guess encodings.
            raise_for_status=False,
        )
        for name, provider in self.config.providers.items():
            self.adapters[name] = self.registry.create(name, provider, self.session)
        await self.probe_all()
        self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        for adapter in self.adapters.values():
            await adapter.close()
        if self.session is not None:
            await self.session.close()

    async def probe_all(self) -> None:
        names = list(self.adapters)
        results = await asyncio.gather(*(self.adapters[n].probe() for n in names))
        for name, probe in zip(names, results, strict=True):
            previous = self.probes.get(name)
            if previous is None or previous.available != probe.available:
                level = logging.INFO if probe.available else logging.WARNING
                log.log(
                    level,
                    "provider %s %s: %s",
                    name,
                    "available" if probe.available else "unavailable",
                    probe.detail,
                )
            self.probes[name] = probe
            self.metrics.child(self.metrics.provider_up, name).set(1 if probe.available else 0)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.server.probe_seconds)
            try:
                await self.probe_all()
            except Exception:
                log.exception("provider probe failed")

    def model_available(self, name: str) -> bool:
        model = self.models.resolve(name)
        if model is None:
            return False
        return any(self.probes.get(t.provider, Probe(False, "")).available for t in model.targets)
