"""Prometheus metrics, counted by our own code on the request path.

One registry per app (no process-global default registry), so two gateways in one test
process never share counters. Labelled children are cached because ``labels()`` takes a lock
and builds a tuple on every call; the hot path should pay for a dict lookup only.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.values import MutexValue

# Without its charset: Litestar adds "; charset=utf-8" to every text/ type, and with
# prometheus_client's own the header said it twice, which strict parsers refuse.
CONTENT_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")

# Latency buckets reach from sub-millisecond gateway overhead to minute-long generations.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class LoopCounter(Counter):
    """A Counter of the per-request metrics, which only the event loop's thread writes.

    prometheus_client's ``inc`` checks observability and exemplars through three Python calls
    and takes a lock: 3,900 instructions per inc (callgrind), four incs per request. One
    writer thread needs no lock for its adds (a scrape reads a float, atomically under the
    GIL): 1,100 here. Negative amounts, exemplars, unlabelled parents and values of another
    kind (prometheus_client's multiprocess mode) go the long way.
    """

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        # A parent with label names has no value of its own: checked first, the long way raises.
        if not self._labelvalues or amount < 0 or exemplar or type(self._value) is not MutexValue:
            super().inc(amount, exemplar)
            return
        self._value._value += amount


class LoopHistogram(Histogram):
    """A Histogram of the per-request metrics, which only the event loop's thread writes.

    prometheus_client's ``observe`` walks the buckets in a Python loop and takes two locks:
    8,100 instructions per observation (callgrind), three per request; 2,300 here, lock-free
    as in ``LoopCounter``, the bucket found by bisection (the first bound >= amount, as the
    loop finds it). NaN, exemplars and the rest of ``LoopCounter``'s cases go the long way.
    """

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if (
            not self._labelvalues
            or exemplar
            or amount != amount
            or type(self._sum) is not MutexValue
        ):
            super().observe(amount, exemplar)
            return
        self._sum._value += amount
        self._buckets[bisect_left(self._upper_bounds, amount)]._value += 1


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_* (RSS, CPU seconds, open files) and python_* (version, GC): read at scrape
        # time only, nothing on the request path. prometheus_client's shared instances, which
        # hold no state of their own; registered here since this registry is not the default.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.requests = LoopCounter(
            "turnout_requests",
            "Requests answered, by route, logical model and status.",
            ("route", "model", "status"),
            registry=r,
        )
        self.duration = LoopHistogram(
            "turnout_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ("route", "model"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = LoopHistogram(
            "turnout_gateway_overhead_seconds",
            "Time spent in the gateway itself, not waiting on upstreams.",
            ("route",),
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.ttft = LoopHistogram(
            "turnout_time_to_first_token_seconds",
            "Streaming: time from request to the first event sent.",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream = LoopCounter(
            "turnout_upstream_requests",
            "Calls to upstream targets, by provider, upstream model and outcome.",
            ("provider", "upstream_model", "outcome"),
            registry=r,
        )
        self.upstream_duration = LoopHistogram(
            "turnout_upstream_duration_seconds",
            "Time spent waiting on one upstream call.",
            ("provider",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "turnout_fallbacks",
            "Requests that moved on to another target after a failure.",
            ("model",),
            registry=r,
        )
        self.cloud_fallbacks = Counter(
            "turnout_cloud_fallbacks",
            "Requests a local target failed and a cloud target answered, by logical model, "
            "local provider and cloud provider.",
            ("model", "local_provider", "cloud_provider"),
            registry=r,
        )
        self.reconnects = Counter(
            "turnout_upstream_reconnects",
            "Requests sent again on a new connection because a kept-alive one had been closed "
            "by the upstream (not failures: no retry, cooldown or fallback), by provider.",
            ("provider",),
            registry=r,
        )
        self.tokens = LoopCounter(
            "turnout_tokens",
            "Tokens reported by upstreams, by logical model and type "
            "(prompt, completion; reasoning is the part of completion spent thinking).",
            ("model", "type"),
            registry=r,
        )
        # Next to turnout_tokens_total{type="prompt"} (which includes them): their ratio is the
        # prompt-cache hit rate, per logical model and per provider (a local role's provider
        # is named after the role).
        self.cached_tokens = LoopCounter(
            "turnout_prompt_tokens_cached",
            "Prompt tokens the upstream served from its prompt cache, by logical model and provider.",
            ("model", "provider"),
            registry=r,
        )
        self.inflight = Gauge(
            "turnout_requests_in_flight", "Requests being answered now.", registry=r
        )
        self.disconnects = Counter(
            "turnout_client_disconnects",
            "Clients that left before their answer was complete.",
            ("route",),
            registry=r,
        )
        self.provider_up = Gauge(
            "turnout_provider_available",
            "1 when the last probe of a provider succeeded.",
            ("provider",),
            registry=r,
        )
        self.engine_state = Gauge(
            "turnout_engine_state",
            "1 for the state each local role's engine is in, 0 for the others.",
            ("role", "state"),
            registry=r,
        )
        self.swaps = Counter(
            "turnout_engine_swaps",
            "Engines brought up (loads and swaps), by role.",
            ("role",),
            registry=r,
        )
        self.swap_duration = Histogram(
            "turnout_engine_swap_duration_seconds",
            "From the decision to load a role (switch or first queued request) to its engine being ready.",
            ("role",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_failures = Counter(
            "turnout_engine_failures",
            "Engine start failures and crashes, by role.",
            ("role",),
            registry=r,
        )
        self.queue_depth = Gauge(
            "turnout_engine_queue_depth",
            "Requests waiting for a role's engine.",
            ("role",),
            registry=r,
        )
        self.engine_wait = Histogram(
            "turnout_engine_wait_seconds",
            "Time requests waited for their role's engine (swaps, loads).",
            ("role",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # KV caches kept across swaps (engines.kv_cache): saved on stop, restored on start.
        self.kv_cache_saves = Counter(
            "turnout_kv_cache_saves",
            "KV cache saves when a role stopped, by outcome (ok, error, timeout).",
            ("role", "outcome"),
            registry=r,
        )
        self.kv_cache_restores = Counter(
            "turnout_kv_cache_restores",
            "Saved slot files read back when a role started, by outcome (ok, error, timeout; "
            "stale, damaged: discarded unread).",
            ("role", "outcome"),
            registry=r,
        )
        self.kv_cache_saved_bytes = Counter(
            "turnout_kv_cache_saved_bytes",
            "Bytes of KV cache written to disk, by role.",
            ("role",),
            registry=r,
        )
        self.kv_cache_bytes = Gauge(
            "turnout_kv_cache_bytes",
            "Bytes of KV cache stored on disk now, by role.",
            ("role",),
            registry=r,
        )
        self.kv_cache_evictions = Counter(
            "turnout_kv_cache_evictions",
            "KV cache files deleted to keep the byte caps (least recently used first).",
            ("role",),
            registry=r,
        )
        # The usage writer's two gauges are read from the writer when scraped
        # (Gauge.set_function), so submitting a row costs the request path no metric update.
        self.usage_queue_depth = Gauge(
            "turnout_usage_queue_depth",
            "Usage rows waiting to be written to the database.",
            registry=r,
        )
        self.usage_lag = Gauge(
            "turnout_usage_lag_seconds",
            "Age of the oldest usage row not yet written (0 when none waits).",
            registry=r,
        )
        self.usage_written = Counter(
            "turnout_usage_rows_written",
            "Usage rows committed to the database.",
            registry=r,
        )
        self.usage_write_errors = Counter(
            "turnout_usage_write_errors",
            "Failed attempts to write a batch of usage rows, by cause (locked, full, readonly, io, other).",
            ("reason",),
            registry=r,
        )
        self.usage_dropped = Counter(
            "turnout_usage_rows_dropped",
            "Usage rows never written: overflow (past usage.max_pending), shutdown (database still "
            "failing when the gateway stopped), invalid (the database refused the row), closed.",
            ("reason",),
            registry=r,
        )
        self.usage_healthy = Gauge(
            "turnout_usage_writer_healthy",
            "1 while usage rows are being written; 0 during a database outage.",
            registry=r,
        )
        self.responses_dropped = Counter(
            "turnout_stored_responses_dropped",
            "Stored responses (store: true) never written: the database was behind by more "
            "than responses.max_pending_bytes.",
            registry=r,
        )
        self.ratelimit_rejections = Counter(
            "turnout_ratelimit_rejections",
            "Requests refused with 429, by the scope that refused (key, agent, model) and the "
            "limit that was reached (requests, tokens, concurrent).",
            ("scope", "limit"),
            registry=r,
        )
        self.ratelimit_backend_errors = Counter(
            "turnout_ratelimit_backend_errors",
            "Failed calls to the shared rate-limit store (redis), by operation (admit, release, "
            "renew, start); while it fails, limits are enforced by each replica on its own.",
            ("op",),
            registry=r,
        )
        self.ratelimit_backend_up = Gauge(
            "turnout_ratelimit_backend_up",
            "1 while the shared rate-limit store answers; 0 while limits are enforced per process.",
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Counter | Histogram | Gauge, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
