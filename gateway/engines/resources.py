"""What memory this machine has free: RAM through psutil, VRAM through nvidia-smi when present."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class Resources:
    ram_free_mb: int
    ram_total_mb: int
    # None: no NVIDIA GPU (or no nvidia-smi) on this machine.
    vram_free_mb: int | None = None
    vram_total_mb: int | None = None

    @property
    def free_mb(self) -> int:
        """Memory a model can be loaded into: VRAM when there is a GPU, RAM otherwise."""
        return self.vram_free_mb if self.vram_free_mb is not None else self.ram_free_mb


async def read_resources() -> Resources:
    memory = psutil.virtual_memory()
    vram = await read_vram()
    return Resources(
        ram_free_mb=memory.available // 2**20,
        ram_total_mb=memory.total // 2**20,
        vram_free_mb=vram[0] if vram else None,
        vram_total_mb=vram[1] if vram else None,
    )


async def read_vram() -> tuple[int, int] | None:
    """(free, total) MB summed over all GPUs, or None without nvidia-smi."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        process = await asyncio.create_subprocess_exec(
            binary,
            "--query-gpu=memory.free,memory.total",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(5):
            out, _ = await process.communicate()
    except (OSError, TimeoutError):
        return None
    return parse_nvidia_smi(out.decode())


def parse_nvidia_smi(text: str) -> tuple[int, int] | None:
    free = total = 0
    rows = 0
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            continue
        free += int(parts[0])
        total += int(parts[1])
        rows += 1
    return (free, total) if rows else None
