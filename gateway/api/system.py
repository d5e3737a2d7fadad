"""Liveness and Prometheus metrics."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from gateway.guards import local_page
from gateway.metrics import CONTENT_TYPE
from gateway.state import GatewayState


class SystemController(Controller):
    @get("/health")
    async def health(self) -> dict[str, str]:
        # Liveness only: the process answers. Readiness of local engines is /engine/health.
        return {"status": "ok"}

    @get("/metrics", guards=[local_page])
    async def metrics(self, gateway: NamedDependency[GatewayState]) -> Response[bytes]:
        if gateway.engine_metrics is not None:
            # The engines' own metrics, read now (briefly cached); one that does not answer
            # loses its samples, never the scrape.
            await gateway.engine_metrics.refresh()
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)
