"""What memory this machine has free: RAM through psutil, VRAM through nvidia-smi when present."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass

import psutil

from gateway.engines.placement import Gpu

# One row per GPU: ``0, NVIDIA H100 80GB HBM3, 81559, 81002`` (MiB, no header, no units).
GPU_QUERY = ("--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits")


@dataclass(frozen=True, slots=True)
class Resources:
    ram_free_mb: int
    ram_total_mb: int
    # None: no NVIDIA GPU (or no nvidia-smi) on this machine.
    vram_free_mb: int | None = None
    vram_total_mb: int | None = None
    # Each GPU, as nvidia-smi numbers them (empty without nvidia-smi).
    gpus: tuple[Gpu, ...] = ()

    @property
    def free_mb(self) -> int:
        """Memory a model can be loaded into: VRAM when there is a GPU, RAM otherwise."""
        return self.vram_free_mb if self.vram_free_mb is not None else self.ram_free_mb


async def read_resources() -> Resources:
    memory = psutil.virtual_memory()
    gpus = await read_gpus()
    return Resources(
        ram_free_mb=memory.available // 2**20,
        ram_total_mb=memory.total // 2**20,
        vram_free_mb=sum(g.free_mb for g in gpus) if gpus else None,
        vram_total_mb=sum(g.total_mb for g in gpus) if gpus else None,
        gpus=gpus,
    )


async def read_gpus() -> tuple[Gpu, ...]:
    """Every GPU's memory now; () without nvidia-smi (or when it fails)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return ()
    try:
        process = await asyncio.create_subprocess_exec(
            binary,
            *GPU_QUERY,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(5):
            out, _ = await process.communicate()
    except (OSError, TimeoutError):
        return ()
    return parse_gpus(out.decode())


def parse_gpus(text: str) -> tuple[Gpu, ...]:
    """``nvidia-smi`` with ``GPU_QUERY``; rows it cannot read (``[N/A]`` memory, an error
    message such as "No devices were found") are left out."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        index, total, free = parts[0], parts[-2], parts[-1]
        if not (index.isdigit() and total.isdigit() and free.isdigit()):
            continue
        name = ", ".join(parts[1:-2])
        gpus.append(Gpu(int(index), total_mb=int(total), free_mb=int(free), name=name))
    return tuple(gpus)


def process_tree_rss_mb(pid: int) -> int:
    """Resident memory of a process and all its descendants (an engine may be a wrapper that
    runs the real server), in MB; 0 when it is gone. Blocking: call it on a thread."""
    return process_tree(pid)[1]


def process_tree(pid: int) -> tuple[frozenset[int], int]:
    """The pids of a process and its descendants, and their resident memory in MB."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return frozenset(), 0
    total = 0
    for process in tree:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return frozenset(p.pid for p in tree), total // 2**20


async def read_vram_of(pids: frozenset[int]) -> int | None:
    """GPU memory those processes hold, summed over all GPUs, in MB; None without nvidia-smi
    or when none of them holds any (a CPU engine)."""
    binary = shutil.which("nvidia-smi")
    if binary is None or not pids:
        return None
    try:
        process = await asyncio.create_subprocess_exec(
            binary,
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(5):
            out, _ = await process.communicate()
    except (OSError, TimeoutError):
        return None
    return parse_compute_apps(out.decode(), pids)


def parse_compute_apps(text: str, pids: frozenset[int]) -> int | None:
    """``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``: one
    ``pid, MiB`` row per process per GPU; a process on two GPUs has two rows."""
    total = 0
    found = False
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            continue
        if int(parts[0]) in pids:
            total += int(parts[1])
            found = True
    return total if found else None


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
