"""Budget periods: when a budget's spend starts again from zero. Pure functions of the clock.

Every period starts at a UTC boundary: ``daily`` at midnight, ``weekly`` on Monday at
midnight, ``monthly`` on the 1st at midnight. No period (None) is a lifetime budget, which
never resets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

Period = Literal["daily", "weekly", "monthly"]
PERIODS: tuple[str, ...] = get_args(Period)

# How each period's start is found from the UTC midnight of a day inside it.
_STARTS: dict[str, Callable[[datetime], datetime]] = {
    "daily": lambda day: day,
    "weekly": lambda day: day - timedelta(days=day.weekday()),
    "monthly": lambda day: day.replace(day=1),
}
# What one period is called in a sentence ("used up its budget for this day").
NOUNS: dict[str, str] = {"daily": "day", "weekly": "week", "monthly": "month"}
# A step from a period's start that always lands inside the next one (UTC has no DST).
_STEPS: dict[str, timedelta] = {
    "daily": timedelta(days=1),
    "weekly": timedelta(days=7),
    "monthly": timedelta(days=32),
}


def period_start(period: str | None, now: float) -> float:
    """Unix seconds when the period holding ``now`` began (0 for a lifetime budget)."""
    if period is None:
        return 0.0
    midnight = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return _STARTS[period](midnight).timestamp()


def period_end(period: str | None, now: float) -> float:
    """Unix seconds when the period holding ``now`` ends (infinity for a lifetime budget)."""
    if period is None:
        return math.inf
    start = datetime.fromtimestamp(period_start(period, now), UTC)
    return period_start(period, (start + _STEPS[period]).timestamp())


@dataclass(slots=True)
class Window:
    """USD spent in the current period of one budget; rolls over to zero at the boundary."""

    period: str | None
    end: float
    usd: float = 0.0

    @classmethod
    def opened(cls, period: str | None, now: float, usd: float = 0.0) -> Window:
        return cls(period, period_end(period, now), usd)

    def spent(self, now: float) -> float:
        return self.usd if now < self.end else 0.0

    def add(self, usd: float, now: float) -> None:
        if now >= self.end:
            self.end = period_end(self.period, now)
            self.usd = 0.0
        self.usd += usd
