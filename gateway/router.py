"""Routing policy: which logical model a name means, and in which order to try its targets.

Everything here is a pure function of its arguments (the clock and the random source are
passed in), so the whole policy is unit-tested without sockets.
"""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config.schema import Config
from gateway.config.upstreams import Model, Provider, Routing, Target
from gateway.errors import GatewayError, UpstreamError


@dataclass(frozen=True, slots=True)
class TargetView:
    """What the policy needs to know about a target's recent life."""

    inflight: int = 0
    cooling_until: float = 0.0


_IDLE = TargetView()


def target_key(target: Target) -> str:
    return f"{target.provider}/{target.model}"


class ModelTable:
    """Logical model names, aliases and name globs → models. Built once from the config."""

    def __init__(self, config: Config) -> None:
        self._by_name: dict[str, Model] = {}
        self._patterns: list[tuple[re.Pattern[str], Model]] = []
        for model in config.models:
            self._by_name[model.name] = model
            for alias in model.aliases:
                self._by_name[alias] = model
            # translate() is case-sensitive (fnmatchcase), whatever the platform.
            self._patterns.extend((re.compile(fnmatch.translate(p)), model) for p in model.patterns)
        self.models: tuple[Model, ...] = config.models

    def resolve(self, name: str) -> Model | None:
        """Exact names and aliases first, then patterns in file order."""
        found = self._by_name.get(name)
        if found is not None or not self._patterns:
            return found
        for pattern, model in self._patterns:
            if pattern.match(name):
                return model
        return None

    def names(self) -> list[str]:
        return sorted(self._by_name)


def eligible(model: Model, providers: Mapping[str, Provider]) -> list[Target]:
    """Targets that may serve this model at all: ``local_only`` is a privacy guarantee, not a preference."""
    result = []
    for target in model.targets:
        provider = providers.get(target.provider)
        if provider is None or provider.missing_env:
            continue
        if model.local_only and not provider.is_local:
            continue
        result.append(target)
    return result


def plan(
    model: Model,
    providers: Mapping[str, Provider],
    views: Mapping[str, TargetView],
    now: float,
    rng: random.Random,
) -> list[Target]:
    """The order in which to try this model's targets for one request.

    Priority tiers first (lower is earlier); inside a tier the model's ``balance`` decides;
    targets cooling down after a failure go last rather than away, so a model whose every
    target failed recently still gets a try instead of an instant error.
    """
    tiers: dict[int, list[Target]] = {}
    for target in eligible(model, providers):
        tiers.setdefault(target.priority, []).append(target)
    ordered: list[Target] = []
    for priority in sorted(tiers):
        ordered.extend(_balance(model.balance, tiers[priority], views, rng))
    warm = [t for t in ordered if views.get(target_key(t), _IDLE).cooling_until <= now]
    cold = [t for t in ordered if views.get(target_key(t), _IDLE).cooling_until > now]
    return warm + cold


def _balance(
    how: str, targets: list[Target], views: Mapping[str, TargetView], rng: random.Random
) -> list[Target]:
    if len(targets) < 2 or how == "ordered":
        return targets
    if how == "least_inflight":
        # Stable sort: ties keep the configured order.
        return sorted(targets, key=lambda t: views.get(target_key(t), _IDLE).inflight)
    return weighted_order(targets, rng)


def weighted_order(targets: Sequence[Target], rng: random.Random) -> list[Target]:
    """A weighted random permutation: each next target is drawn in proportion to its weight."""
    pool = list(targets)
    result: list[Target] = []
    while pool:
        total = sum(t.weight for t in pool)
        pick = rng.random() * total
        for i, target in enumerate(pool):
            pick -= target.weight
            if pick < 0 or i == len(pool) - 1:
                result.append(pool.pop(i))
                break
    return result


def should_fall_back(error: GatewayError) -> bool:
    """Try the next target after connect errors, timeouts, 429 and 5xx; never after a client error."""
    return isinstance(error, UpstreamError) and error.retryable


def backoff_delay(
    pass_number: int, routing: Routing, rng: random.Random, retry_after: float | None
) -> float:
    """Sleep before pass ``pass_number`` (1-based) over the target list: exponential with jitter."""
    base = routing.backoff_seconds * 2.0 ** (pass_number - 1)
    delay: float = min(routing.backoff_max_seconds, base) * (0.5 + rng.random() / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, routing.backoff_max_seconds))
    return delay
