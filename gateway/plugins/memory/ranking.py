"""Pure policy: how found items are ordered, and how items are spread over search shards.

Search works in two passes (``store.py``): a coarse pass over 1-bit codes finds candidates
by Hamming distance, then their exact float vectors decide. sqlite-vec's KNN costs grow with
rows x k, so one scan with a large k is slow; an agent's items are instead split into shards
of ``shard_size`` and each shard is asked for a small k. The candidates of all shards cover
about as many of the closest items as one global scan for ``shards x k`` would, at a fraction
of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from gateway.plugins.memory.items import Hit

# Candidates each shard contributes to the exact re-rank of a top-10 search. 16 of a 2048-item
# shard keeps recall@10 at about 0.99 on MiniLM embeddings (bench/memory.py measures it).
CANDIDATES_PER_SHARD = 16
TUNED_FOR = 10


def candidates_per_shard(limit: int) -> int:
    """Asking for more results needs proportionally more candidates to keep recall."""
    return max(CANDIDATES_PER_SHARD, math.ceil(CANDIDATES_PER_SHARD * limit / TUNED_FOR))


def rerank_pool(limit: int) -> int:
    """Hits a search keeps after the exact pass: some beyond ``limit``, for recency to reorder."""
    return 3 * limit


def recency(age_seconds: float, half_life_seconds: float) -> float:
    """1 for an item made now, 0.5 one half life ago, towards 0 for old ones."""
    return math.pow(0.5, max(age_seconds, 0.0) / half_life_seconds)


def rank(
    hits: Sequence[Hit], now: float, weight: float, half_life_seconds: float, limit: int
) -> list[Hit]:
    """The best ``limit`` hits by similarity plus ``weight`` x recency, best first."""
    scored = [
        replace(
            h, score=h.similarity + weight * recency(now - h.item.created_at, half_life_seconds)
        )
        for h in hits
    ]
    scored.sort(key=lambda h: (-h.score, -h.item.id))
    return scored[:limit]


def place(shard: int, used: int, count: int, shard_size: int) -> tuple[list[int], int, int]:
    """Shards for ``count`` new items of one agent whose newest shard ``shard`` holds ``used``.

    Returns each item's shard and the agent's newest shard and its fill afterwards. Shards
    fill in order, so an agent with few items has one shard (one small partition on disk).
    """
    shards: list[int] = []
    for _ in range(count):
        if used >= shard_size:
            shard, used = shard + 1, 0
        shards.append(shard)
        used += 1
    return shards, shard, used
