"""The per-request metrics' short ways (gateway/metrics.py) expose exactly what
prometheus_client's own Counter and Histogram would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import LoopCounter, LoopHistogram

BUCKETS = (0.0001, 0.001, 0.01, 1)
AMOUNTS = (0.0, 0.0001, 0.00010001, 0.001, 0.5, 1.0, 1.0000001, 5.0, float("inf"), -1.0)


def _exposed(registry: CollectorRegistry) -> bytes:
    # Creation timestamps differ between any two metrics; everything else must not.
    return re.sub(rb"_created\{[^}]*\} \S+", b"", generate_latest(registry))


def test_loop_metrics_expose_the_same_buckets_sums_and_counts_as_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    h0 = Histogram("h", "h", ["a"], buckets=BUCKETS, registry=theirs).labels("x")
    h1 = LoopHistogram("h", "h", ["a"], buckets=BUCKETS, registry=ours).labels("x")
    c0 = Counter("c", "c", ["a"], registry=theirs).labels("x")
    c1 = LoopCounter("c", "c", ["a"], registry=ours).labels("x")
    for amount in AMOUNTS:
        h0.observe(amount)
        h1.observe(amount)
    for amount in (1.0, 2.5, 0.0):
        c0.inc(amount)
        c1.inc(amount)
    assert _exposed(ours) == _exposed(theirs)


def test_a_nan_observation_is_counted_only_in_the_sum_and_count_as_prometheus_does() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    Histogram("h", "h", ["a"], buckets=BUCKETS, registry=theirs).labels("x").observe(float("nan"))
    LoopHistogram("h", "h", ["a"], buckets=BUCKETS, registry=ours).labels("x").observe(float("nan"))
    assert _exposed(ours) == _exposed(theirs)


def test_misuse_is_refused_as_prometheus_client_refuses_it() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("c", "c", ["a"], registry=registry)
    with pytest.raises(ValueError):
        counter.inc()  # a parent with label names has no value of its own
    with pytest.raises(ValueError):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError):
        LoopHistogram("h", "h", ["a"], registry=registry).observe(1.0)
