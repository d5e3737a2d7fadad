"""The gateway's tracer, when tracing is on; nothing that builds or sends spans is imported when off."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from gateway.config.observability import Telemetry
from gateway.telemetry.settings import export_of

# CPUs from which ``telemetry.worker: auto`` runs the tracing worker process: with one, the
# worker would only take turns with the event loop it is meant to relieve.
WORKER_CPUS = 2

if TYPE_CHECKING:
    from gateway.config.upstreams import Provider
    from gateway.engines.events import EngineEvents
    from gateway.pipeline.call import Call


class Tracer(Protocol):
    """What the request path sees of tracing (``spans.RequestSpans``)."""

    def record(self, route: str, call: Call) -> None:
        """The spans of ``call``, which ended now."""
        ...

    async def close(self) -> None:
        """Sends what is still queued."""
        ...


def open_tracer(
    section: Telemetry,
    env: Mapping[str, str],
    providers: Mapping[str, Provider],
    events: EngineEvents | None,
    cpus: int | None = None,
) -> Tracer | None:
    """The tracer routing.yaml and the OTEL_* variables ask for; None when off."""
    export = export_of(section, env)
    if export is None:
        return None
    # Imported only now: a gateway that does not trace never loads the span builder or exporter.
    from gateway.telemetry.spans import RequestSpans

    return RequestSpans(export, providers, events, in_worker=in_worker(section, cpus))


def in_worker(section: Telemetry, cpus: int | None) -> bool:
    """``telemetry.worker``: auto means a worker process where a core is free for it."""
    if section.worker == "auto":
        return (cpus or 1) >= WORKER_CPUS
    return section.worker == "process"
