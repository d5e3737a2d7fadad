"""Which GPUs a role's engine goes on: a pure decision from each GPU's free memory and the
role's need (``roles.X.gpus``). Reading the GPUs and applying the decision (environment,
engine arguments) are ``gpus.py``'s business.

``auto`` (the default) on a machine with several GPUs puts a role on the one GPU that fits it
most tightly (best fit: the GPU with the most room stays free for a bigger role), else spreads
it over the fewest GPUs with the most room, split in proportion to their free memory. With one
GPU or none, a role whose size is not known yet (no estimate, no measurement) or one that fits
nowhere even spread over all, the engine keeps its own defaults (every GPU it sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config.engines import ALL_GPUS, GpuSpec


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as ``nvidia-smi`` numbers it (PCI bus order), memory in MiB."""

    index: int
    total_mb: int
    free_mb: int
    name: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    # nvidia-smi indices the engine may use; (): no restriction, the engine's own default.
    devices: tuple[int, ...] = ()
    # Share of the model per device, in the order of ``devices`` (llama.cpp --tensor-split);
    # (): the engine's own split.
    split: tuple[int, ...] = ()
    # Why: shown in /engine/status and logged at start.
    reason: str = ""

    def env(self) -> dict[str, str]:
        """The variables that restrict a CUDA engine to ``devices``."""
        if not self.devices:
            return {}
        return {
            # CUDA numbers devices fastest first unless told otherwise; nvidia-smi numbers them
            # by PCI bus. Without this, "GPU 1" could be another card than the one with room.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in self.devices),
        }


def place(spec: GpuSpec, gpus: Sequence[Gpu], need_mb: int) -> Placement:
    """Where an engine needing ``need_mb`` (0: unknown) goes, given ``roles.X.gpus``."""
    if isinstance(spec, tuple):
        return Placement(spec, reason="configured (roles.*.gpus)")
    if spec == ALL_GPUS:
        return Placement(reason="gpus: all (the engine's default)")
    if len(gpus) < 2:
        return Placement(reason="no GPU" if not gpus else "one GPU")
    if need_mb <= 0:
        return Placement(reason="size not known yet: the engine's default")
    fitting = [g for g in gpus if g.free_mb >= need_mb]
    if fitting:
        best = min(fitting, key=lambda g: (g.free_mb, g.index))
        return Placement((best.index,), reason=f"fits on GPU {best.index} ({best.free_mb} MB free)")
    return _spread(gpus, need_mb)


def _spread(gpus: Sequence[Gpu], need_mb: int) -> Placement:
    """The fewest GPUs, most room first, whose free memory together holds ``need_mb``."""
    chosen: list[Gpu] = []
    room = 0
    for gpu in sorted(gpus, key=lambda g: (-g.free_mb, g.index)):
        if room >= need_mb:
            break
        if gpu.free_mb > 0:
            chosen.append(gpu)
            room += gpu.free_mb
    if room < need_mb:
        return Placement(
            reason=f"needs {need_mb} MB, {room} MB free on all GPUs: the engine's default"
        )
    chosen.sort(key=lambda g: g.index)
    return Placement(
        tuple(g.index for g in chosen),
        tuple(g.free_mb for g in chosen),
        f"split over GPUs {','.join(str(g.index) for g in chosen)} by free memory",
    )
