"""Cost estimates from the ``prices:`` table: which entry prices a request, and what it costs."""

from __future__ import annotations

import pytest

from gateway.config import Price, parse
from gateway.pricing import cost, find_price

PRICES = {
    "smart": Price(input=3.0, output=15.0, cached_input=0.3),
    "gpt-4o": Price(input=2.5, output=10.0),
    "claude-*": Price(input=1.0, output=5.0),
    "*": Price(input=0.0, output=0.0),
}


def test_the_logical_model_name_wins_over_the_upstream_name() -> None:
    assert find_price(PRICES, "smart", "gpt-4o") is PRICES["smart"]


def test_the_upstream_model_name_prices_a_logical_model_without_an_entry() -> None:
    assert find_price(PRICES, "chat", "gpt-4o") is PRICES["gpt-4o"]


def test_exact_names_win_over_globs_and_globs_go_in_table_order() -> None:
    assert find_price(PRICES, "claude-sonnet-4", None) is PRICES["claude-*"]
    assert find_price(PRICES, "fast", "claude-haiku") is PRICES["claude-*"]
    assert find_price(PRICES, "local", "qwen") is PRICES["*"]
    assert find_price({"a*": Price(1), "ab*": Price(2)}, "abc", None) == Price(1)


def test_a_model_no_entry_matches_has_no_cost() -> None:
    assert cost({"gpt-4o": Price(1, 1)}, "local", "qwen", 100, 100) is None


def test_cost_is_per_million_tokens() -> None:
    assert cost(PRICES, "gpt-4o", None, 1_000_000, 500_000) == pytest.approx(2.5 + 5.0)


def test_cached_tokens_are_part_of_the_prompt_and_priced_at_cached_input() -> None:
    # 1000 prompt tokens of which 800 were cache hits: 200 at 3.0, 800 at 0.3, 100 out at 15.
    expected = (200 * 3.0 + 800 * 0.3 + 100 * 15.0) / 1e6
    assert cost(PRICES, "smart", None, 1000, 100, cached=800) == pytest.approx(expected)


def test_cached_tokens_cost_the_input_price_when_the_table_has_no_cached_price() -> None:
    assert cost(PRICES, "gpt-4o", None, 1000, 0, cached=800) == pytest.approx(1000 * 2.5 / 1e6)


def test_a_free_local_model_costs_zero_not_unknown() -> None:
    assert cost(PRICES, "local", None, 1000, 1000) == 0.0


def test_prices_come_from_routing_yaml() -> None:
    config = parse(
        """
prices:
  gpt-4o-mini: {input: 0.15, output: 0.6, cached_input: 0.075}
  "claude-*": {input: 3, output: 15}
""",
        env={},
    )
    assert cost(config.prices, "chat", "gpt-4o-mini", 2000, 1000, 1000) == pytest.approx(
        (1000 * 0.15 + 1000 * 0.075 + 1000 * 0.6) / 1e6
    )
    assert list(config.prices) == ["gpt-4o-mini", "claude-*"]
