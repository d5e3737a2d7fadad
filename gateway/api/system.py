"""Liveness, readiness and Prometheus metrics.

``/health`` is liveness. The aliases answer the probe paths configs for other gateways already
use (Kubernetes examples, LiteLLM's ``/health/liveliness``), so a deployment moved to turnout
keeps its probes. Readiness is about this process taking traffic, not about local engines: a
role that is not loaded is swapped in on demand (its state is ``/engine/health``).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency

from gateway.draining import SHUTTING_DOWN
from gateway.guards import local_page
from gateway.metrics import CONTENT_TYPE
from gateway.state import GatewayState


class SystemController(Controller):
    @get(["/health", "/health/liveness", "/health/liveliness"])
    async def health(self) -> dict[str, str]:
        # Liveness only: the process answers. Readiness of local engines is /engine/health.
        return {"status": "ok"}

    @get("/health/readiness")
    async def readiness(self, request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
        # 503 once shutdown begins (gateway/draining.py marks it), while connections drain.
        if request.scope.get("state", {}).get(SHUTTING_DOWN):
            return Response({"status": "shutting_down"}, status_code=503)
        return Response({"status": "ready"})

    @get("/metrics", guards=[local_page])
    async def metrics(self, gateway: NamedDependency[GatewayState]) -> Response[bytes]:
        if gateway.engine_metrics is not None:
            # The engines' own metrics, read now (briefly cached); one that does not answer
            # loses its samples, never the scrape.
            await gateway.engine_metrics.refresh()
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)
