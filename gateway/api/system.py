"""Liveness and Prometheus metrics."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from gateway.guards import local_page
from gateway.metrics import CONTENT_TYPE, Metrics


class SystemController(Controller):
    @get("/health")
    async def health(self) -> dict[str, str]:
        # Liveness only: the process answers. Readiness of local engines is /engine/health.
        return {"status": "ok"}

    @get("/metrics", guards=[local_page])
    async def metrics(self, metrics: NamedDependency[Metrics]) -> Response[bytes]:
        return Response(metrics.render(), media_type=CONTENT_TYPE)
