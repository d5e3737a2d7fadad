"""Whether each provider can take requests: probed at start and every ``server.probe_seconds``.

The same loop reads free VRAM (nvidia-smi is too slow to run per decision); free RAM is read
through psutil whenever the supervisor asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import psutil

from adapters.base import Adapter, Probe
from gateway.config.engines import Role
from gateway.config.roles import ROLE_PREFIX
from gateway.engines.resources import Resources, read_resources
from gateway.engines.states import EngineState
from gateway.engines.supervisor import Supervisor
from gateway.metrics import Metrics

log = logging.getLogger("turnout")


class Prober:
    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        metrics: Metrics,
        roles: Mapping[str, Role],
        missing_parts: Callable[[Role], str],
        seconds: float,
    ) -> None:
        self._adapters = adapters
        self._metrics = metrics
        self._roles = roles
        self._missing_parts = missing_parts
        self._seconds = seconds
        self.probes: dict[str, Probe] = {}
        self._vram: Resources | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Probes again every ``server.probe_seconds`` (the first round is ``probe_all``)."""
        self._task = asyncio.get_running_loop().create_task(self._probe_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def resources(self) -> Resources:
        """Free memory now: RAM is cheap to read on every decision; VRAM comes from the prober."""
        memory = psutil.virtual_memory()
        vram = self._vram
        return Resources(
            ram_free_mb=memory.available // 2**20,
            ram_total_mb=memory.total // 2**20,
            vram_free_mb=vram.vram_free_mb if vram else None,
            vram_total_mb=vram.vram_total_mb if vram else None,
            gpus=vram.gpus if vram else (),
        )

    async def probe_all(self) -> None:
        names = [n for n in self._adapters if not n.startswith(ROLE_PREFIX)]
        results = await asyncio.gather(*(self._adapters[n].probe() for n in names))
        for name, probe in zip(names, results, strict=True):
            if self._news(name, probe):
                level = logging.INFO if probe.available else logging.WARNING
                state = "available" if probe.available else "unavailable"
                log.log(level, "provider %s %s: %s", name, state, probe.detail)
            self.probes[name] = probe
            self._metrics.child(self._metrics.provider_up, name).set(1 if probe.available else 0)
        if self._roles:
            self._vram = await read_resources()

    def _news(self, name: str, probe: Probe) -> bool:
        """Whether ``probe`` is worth a log line: a change, or the first word on a provider."""
        previous = self.probes.get(name)
        if previous is not None:
            return previous.available != probe.available
        # An unset key was said once already, with the config warnings at start (see
        # gateway/config/validation.py), and cannot change while the gateway runs.
        return not self._adapters[name].provider.missing_env

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._seconds)
            try:
                await self.probe_all()
            except Exception:
                log.exception("provider probe failed")

    def availability(self, provider: str, supervisor: Supervisor | None) -> Probe:
        """Whether a provider can take requests now, and why not."""
        if provider.startswith(ROLE_PREFIX) and supervisor is not None:
            role = provider[len(ROLE_PREFIX) :]
            status = supervisor.status(role)
            if status.state is EngineState.FAILED:
                return Probe(False, f"local role {role} failed: {status.last_error}")
            problem = self._missing_parts(self._roles[role])
            if problem and status.state is not EngineState.READY:
                return Probe(False, f"local role {role} cannot start: {problem}")
            return Probe(True, f"local role {role}: {status.state}; loads on demand")
        return self.probes.get(provider) or Probe(False, "not probed yet")
