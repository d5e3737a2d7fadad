"""Memory as the scheduling budget: what each role needs, and which loaded roles to unload for it.

Pure functions and plain records: the supervisor fills a ``Footprint`` per role (an estimate
before the first load, the measured size after each), the scheduler asks ``need_mb`` and
``cheapest_evictions``. Nothing here reads a file, a process or the clock.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.engines.gguf import ModelShape

# Beyond weights and KV cache: compute buffers, the tokenizer, the server itself. Measured with
# the tiny test models (llama-server, -c 4096 -np 4, CPU): 103 MB resident for a 43 MB file and
# a 2 MB cache, so about 58 MB; larger models need larger compute buffers, which the first
# measured load then replaces.
OVERHEAD_MB = 64
# Reload cost of a role never loaded yet: about 1 GB/s from the page cache into memory.
SECONDS_PER_MB = 0.001
# Above this many candidates, choose greedily instead of trying every subset (2^12 = 4096).
EXACT_LIMIT = 12


@dataclass(slots=True)
class Footprint:
    """What one role costs to hold and to load; written only by the supervisor's owner."""

    estimated_mb: int = 0
    measured_mb: int = 0
    load_seconds: float | None = None

    def need_mb(self, configured_mb: int) -> int:
        return need_mb(configured_mb, self.estimated_mb, self.measured_mb)

    def reload_seconds(self, configured_mb: int) -> float:
        if self.load_seconds is not None:
            return self.load_seconds
        return self.need_mb(configured_mb) * SECONDS_PER_MB


def need_mb(configured_mb: int, estimated_mb: int, measured_mb: int) -> int:
    """Measured after a load beats everything; before one, the configured ``memory_mb`` beats
    the estimate from the model file. 0: unknown (then a role always fits, and its engine says
    if it does not)."""
    return measured_mb or configured_mb or estimated_mb


def estimate_mb(file_bytes: int, shape: ModelShape | None, context: int) -> int:
    """Weights (the file's size) plus the KV cache for ``context`` tokens, plus overhead.

    llama-server's ``-c`` is the context of all parallel slots together (each slot gets a
    share), so the slot count does not multiply the cache.
    """
    kv = shape.kv_bytes_per_token * max(0, context) if shape is not None else 0
    return math.ceil((file_bytes + kv) / 2**20) + OVERHEAD_MB


@dataclass(frozen=True, slots=True)
class Candidate:
    """A loaded role that could be unloaded to make room."""

    role: str
    mb: int
    reload_seconds: float
    # Requests in flight or queued: unloading it means draining it and loading it back soon.
    busy: bool = False
    last_used: float = 0.0


def cheapest_evictions(short_mb: int, candidates: Sequence[Candidate]) -> list[str] | None:
    """The candidates to unload that free at least ``short_mb`` at the least cost, or None
    when all of them together free too little.

    Cost, in order: how many busy roles it drains, the total time to load them back, how many
    roles it unloads, then least recently used first. A 4 GB role that reloads in 2 s goes
    before two 2 GB roles that take 3 s each.
    """
    if short_mb <= 0:
        return []
    if sum(c.mb for c in candidates) < short_mb:
        return None
    if len(candidates) > EXACT_LIMIT:
        return _greedy(short_mb, candidates)
    best: tuple[tuple[int, float, int, float], tuple[Candidate, ...]] | None = None
    for size in range(1, len(candidates) + 1):
        for chosen in itertools.combinations(candidates, size):
            if sum(c.mb for c in chosen) < short_mb:
                continue
            cost = _cost(chosen)
            if best is None or cost < best[0]:
                best = (cost, chosen)
    return [c.role for c in best[1]] if best is not None else None


def _cost(chosen: Sequence[Candidate]) -> tuple[int, float, int, float]:
    return (
        sum(c.busy for c in chosen),
        round(sum(c.reload_seconds for c in chosen), 6),
        len(chosen),
        max(c.last_used for c in chosen),
    )


def _greedy(short_mb: int, candidates: Sequence[Candidate]) -> list[str]:
    order = sorted(candidates, key=lambda c: (c.busy, c.reload_seconds / max(c.mb, 1), c.last_used))
    chosen: list[str] = []
    for candidate in order:
        if short_mb <= 0:
            break
        chosen.append(candidate.role)
        short_mb -= candidate.mb
    return chosen


def explain(
    target: str, need: int, short: int, chosen: list[str], candidates: list[Candidate]
) -> str:
    """One log line: what is unloaded for ``target``'s memory, and what it was weighed against."""
    weighed = ", ".join(
        f"{c.role} {c.mb} MB/{c.reload_seconds:.2f} s{' busy' if c.busy else ''}"
        for c in candidates
    )
    return (
        f"unloading {', '.join(chosen)} for role {target}: it needs {need} MB, {short} MB more "
        f"than is free; least reload cost that frees enough, of ({weighed})"
    )
