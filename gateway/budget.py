"""What keys with a budget have spent: loaded from the usage log, then counted as requests end."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.config.schema import Price
from gateway.keys import KeyCache, spent_by_key
from gateway.pricing import cost
from gateway.usage import UsageRecord


class Budgets:
    def __init__(self, keys: KeyCache, prices: Mapping[str, Price]) -> None:
        self._keys = keys
        self._prices = prices
        # USD spent per key with a budget.
        self.spent: dict[str, float] = {}

    async def load(self, database: str) -> None:
        self.spent = await asyncio.to_thread(spent_by_key, database)

    def left(self, key_id: str) -> float | None:
        """USD a key may still spend; None when it has no budget."""
        record = self._keys.by_id(key_id)
        if record is None or record.budget_usd is None:
            return None
        return record.budget_usd - self.spent.get(key_id, 0.0)

    def charge(self, record: UsageRecord) -> None:
        """Prices the row of a key with a budget and counts it as spent.

        Other rows are priced by the usage writer, off the request path.
        """
        key_id = record.key_id
        if key_id is None or not self._prices or self.left(key_id) is None:
            return
        record.cost_usd = cost(
            self._prices,
            record.model,
            record.upstream_model,
            record.prompt_tokens,
            record.completion_tokens,
            record.cached_tokens,
        )
        if record.cost_usd:
            self.spent[key_id] = self.spent.get(key_id, 0.0) + record.cost_usd
