"""Each local engine's own Prometheus metrics (llama-server ``--metrics``: ``llamacpp:*``),
re-exported on turnout's ``/metrics`` with a ``role`` label and the engine's names kept.

Read at scrape time, never on the request path: ``/metrics`` awaits ``refresh()``, which asks
every ready role whose engine kind has a metrics path, all at once, each with a short timeout,
and keeps the answers for a second so that scrapers arriving together cost one round. An
engine that does not answer (or answers garbage) loses its samples from that scrape, never the
scrape itself; ``turnout_engine_metrics_up{role}`` says which engines answered.

The same metric from two roles is one family with two ``role`` values: a text exposition may
name a family once only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.engines import Role
from gateway.engines.kinds import EngineKinds

log = logging.getLogger("turnout.engines")

# A scrape waits at most this long for the slowest engine (Prometheus' own default scrape
# timeout is 10 s; a stuck engine must not use it up).
FETCH_TIMEOUT_SECONDS = 1.0
# Answers younger than this are reused: scrapers arriving together ask each engine once.
MAX_AGE_SECONDS = 1.0
# Our own names stay ours: an engine exporting one of them would make the exposition invalid.
OWN_PREFIX = "turnout_"


def metrics_urls(
    roles: Mapping[str, Role], kinds: EngineKinds, base_urls: Mapping[str, str]
) -> dict[str, str]:
    """{role: its engine's metrics URL} for the roles whose kind has one; ``base_urls`` is each
    role's OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""
    urls = {}
    for name, role in roles.items():
        path = kinds.of(role).metrics_path
        base = base_urls.get(name, "")
        if path and base:
            parts = urlsplit(base)
            urls[name] = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return urls


def relabel(scraped: Mapping[str, str]) -> list[Metric]:
    """The engines' exposition texts, by role, as families whose samples carry ``role``."""
    families: dict[str, Metric] = {}
    for role, text in scraped.items():
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("role %s: engine metrics not readable: %s", role, exc)
            continue
        for family in parsed:
            if family.name.startswith(OWN_PREFIX):
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            elif merged.type != family.type:
                # Two engine versions disagreeing on a type: one family cannot hold both.
                continue
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "role": role}) for sample in family.samples
            )
    return list(families.values())


class EngineMetrics:
    """A collector on the gateway's registry, fed by ``refresh()`` before each render."""

    def __init__(
        self,
        urls: Mapping[str, str],
        ready: Callable[[str], bool],
        session: aiohttp.ClientSession,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        max_age: float = MAX_AGE_SECONDS,
    ) -> None:
        self._urls = dict(urls)
        self._ready = ready
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_age = max_age
        self._families: list[Metric] = []
        self._up: dict[str, bool] = {}
        self._fetched_at = -math.inf
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._max_age:
                return
            roles = [name for name in self._urls if self._ready(name)]
            texts = await asyncio.gather(*(self._fetch(name) for name in roles))
            scraped = {name: text for name, text in zip(roles, texts, strict=True) if text}
            self._families = relabel(scraped)
            self._up = {name: name in scraped for name in roles}
            self._fetched_at = time.monotonic()

    async def _fetch(self, role: str) -> str | None:
        url = self._urls[role]
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    # llama-server without --metrics answers 501: a role's own command may lack it.
                    log.debug("role %s: %s answered HTTP %d", role, url, response.status)
                    return None
                return await response.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            log.debug("role %s: %s not read: %s", role, url, exc.__class__.__name__)
            return None

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: the names are the engines', known only once they answer (and an
        # empty description keeps the registry from collecting at registration).
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "turnout_engine_metrics_up",
            "1 when a ready role's engine answered the last read of its own metrics, else 0.",
            labels=("role",),
        )
        for role, answered in sorted(self._up.items()):
            up.add_metric((role,), 1.0 if answered else 0.0)
        yield up
        yield from self._families
