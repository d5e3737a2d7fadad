"""Placing a role's engine on GPUs at each start, the effects around ``placement.place``: read
what each GPU has free now, decide, remember the decision for ``/engine/status``. The driver
applies it (``CUDA_VISIBLE_DEVICES`` and the kind's arguments, ``process.Launch``).

Read at start rather than from the prober's last reading: the engine just stopped to make room
has given its memory back since then.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway.config.engines import AUTO_GPUS, Role
from gateway.engines.placement import Gpu, Placement, place
from gateway.engines.resources import read_gpus

log = logging.getLogger("turnout.engines")


class GpuPlacer:
    def __init__(
        self,
        need_mb: Callable[[str], int],
        read: Callable[[], Awaitable[tuple[Gpu, ...]]] = read_gpus,
    ) -> None:
        # The memory a role is planned with (measured, configured or estimated; 0: unknown).
        self._need_mb = need_mb
        self._read = read
        # What the last read found. With fewer than two GPUs ``auto`` has nothing to choose,
        # and a machine does not grow GPUs: nvidia-smi (tens of ms or more) is not run again.
        self._gpus: tuple[Gpu, ...] | None = None
        self._placed: dict[str, Placement] = {}

    async def place(self, name: str, role: Role) -> Placement:
        placement = await self._decide(name, role)
        self._placed[name] = placement
        if placement.devices:
            log.info(
                "role %s on GPU %s: %s",
                name,
                ",".join(str(d) for d in placement.devices),
                placement.reason,
            )
        return placement

    async def _decide(self, name: str, role: Role) -> Placement:
        if "CUDA_VISIBLE_DEVICES" in role.env:
            return Placement(reason=f"roles.{name}.env sets CUDA_VISIBLE_DEVICES")
        gpus = self._gpus
        if role.gpus == AUTO_GPUS and (gpus is None or len(gpus) > 1):
            gpus = self._gpus = await self._read()
        return place(role.gpus, gpus or (), self._need_mb(name))

    def placement(self, name: str) -> Placement | None:
        """Where ``name``'s engine was put at its last start (None: not started yet)."""
        return self._placed.get(name)
