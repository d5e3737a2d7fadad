"""Estimated cost of a request from the ``prices:`` table in routing.yaml. Pure functions.

Token counts follow OpenAI's convention: ``prompt`` includes ``cached`` (cache hits are the part
of the prompt the provider did not process again), so cached tokens are priced once, at
``cached_input`` when the table gives it and at ``input`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from gateway.config.schema import Price

_GLOB_CHARS = frozenset("*?[")


def find_price(prices: Mapping[str, Price], model: str, upstream_model: str | None) -> Price | None:
    """The logical model's exact entry, else the upstream model's, else the first glob matching either."""
    price = prices.get(model)
    if price is None and upstream_model:
        price = prices.get(upstream_model)
    if price is not None:
        return price
    names = (model, upstream_model) if upstream_model else (model,)
    for pattern, candidate in prices.items():
        if _GLOB_CHARS.isdisjoint(pattern):
            continue
        if any(fnmatchcase(name, pattern) for name in names):
            return candidate
    return None


def price_tokens(price: Price, prompt: int, completion: int, cached: int) -> float:
    """USD for these token counts (prices are per million tokens)."""
    cached = min(max(cached, 0), max(prompt, 0))
    cached_rate = price.input if price.cached_input is None else price.cached_input
    micro_usd = (prompt - cached) * price.input + cached * cached_rate + completion * price.output
    return micro_usd / 1_000_000


def cost(
    prices: Mapping[str, Price],
    model: str,
    upstream_model: str | None,
    prompt: int,
    completion: int,
    cached: int = 0,
) -> float | None:
    """USD for one request, or None when no entry prices this model."""
    price = find_price(prices, model, upstream_model)
    if price is None:
        return None
    return price_tokens(price, prompt, completion, cached)
