"""Sizing roles, the effects behind ``memory.py``: estimates read from model files, measured
sizes read from engine processes, both remembered in the database across restarts.

Everything here blocks or does I/O, so the supervisor runs it in tasks off its owner (file and
process reads on threads) and gets the results back as ``Sized`` messages.

The database keeps a row per (role, model, context): a changed model or context is another
size, so it starts again from an estimate. Written once per load; a database that cannot be
read or written only costs the estimate (logged, never raised).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping

from gateway.config.engines import Role
from gateway.db import MEMORY, connect
from gateway.engines.gguf import file_size_and_shape
from gateway.engines.inbox import Sized
from gateway.engines.memory import Footprint, estimate_mb
from gateway.engines.resources import process_tree, read_vram_of

log = logging.getLogger("turnout.engines")


async def initial_sizes(roles: Mapping[str, Role], database: str) -> list[Sized]:
    """What is known before any load: remembered measurements, else estimates from GGUF files."""
    remembered = await recall(database, roles)
    sizes = []
    for name, role in roles.items():
        if name in remembered:
            measured, seconds = remembered[name]
            sizes.append(Sized(name, measured_mb=measured, load_seconds=seconds, recalled=True))
            continue
        found = await asyncio.to_thread(file_size_and_shape, role.model)
        if found is not None:
            size, shape = found
            sizes.append(Sized(name, estimated_mb=estimate_mb(size, shape, role.context)))
    return sizes


async def measure(
    name: str, role: Role, pid: int, load_seconds: float, database: str
) -> Sized | None:
    """The engine's size right after its load (and warm-up), remembered: the GPU memory its
    processes hold when they hold any (free VRAM is then the budget, see ``Resources``),
    else their resident RAM."""
    pids, rss_mb = await asyncio.to_thread(process_tree, pid)
    vram_mb = await read_vram_of(pids)
    measured = vram_mb if vram_mb is not None else rss_mb
    if not measured:
        return None
    await remember(database, name, role, measured, load_seconds)
    return Sized(name, measured_mb=measured, load_seconds=load_seconds)


def apply(footprint: Footprint, sized: Sized, configured_mb: int) -> None:
    """What the owner does with a ``Sized`` message: a measurement replaces the estimate."""
    if sized.estimated_mb:
        footprint.estimated_mb = sized.estimated_mb
    if sized.load_seconds is not None:
        footprint.load_seconds = sized.load_seconds
    if sized.measured_mb and not sized.recalled:
        log.info(
            "role %s measured %d MB resident (planned with %d MB)",
            sized.role,
            sized.measured_mb,
            footprint.need_mb(configured_mb),
        )
    if sized.measured_mb:
        footprint.measured_mb = sized.measured_mb


async def recall(database: str, roles: Mapping[str, Role]) -> dict[str, tuple[int, float | None]]:
    """{role: (measured MB, load seconds)} for the roles whose model and context match."""
    if not database or database == MEMORY:
        return {}
    try:
        connection = await connect(database, read_only=True)
        try:
            rows = await connection.execute_fetchall(
                "SELECT role, model, context, measured_mb, load_seconds FROM engine_memory"
            )
        finally:
            await connection.close()
    except (sqlite3.Error, OSError) as exc:
        log.warning("engine sizes not recalled from %s: %s", database, exc)
        return {}
    found: dict[str, tuple[int, float | None]] = {}
    for name, model, context, measured_mb, load_seconds in rows:
        role = roles.get(name)
        if role is not None and role.model == model and role.context == context:
            found[name] = (int(measured_mb), load_seconds)
    return found


async def remember(
    database: str, name: str, role: Role, measured_mb: int, load_seconds: float | None
) -> None:
    if not database or database == MEMORY:
        return
    try:
        connection = await connect(database)
        try:
            await connection.execute(
                "INSERT INTO engine_memory "
                "(role, model, context, measured_mb, load_seconds, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (role, model, context) DO UPDATE SET "
                "measured_mb = excluded.measured_mb, load_seconds = excluded.load_seconds, "
                "updated_at = excluded.updated_at",
                (name, role.model, role.context, measured_mb, load_seconds, time.time()),
            )
        finally:
            await connection.close()
    except (sqlite3.Error, OSError) as exc:
        log.warning("role %s: measured size not remembered in %s: %s", name, database, exc)
