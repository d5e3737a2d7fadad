"""Liveness, Prometheus metrics and the provider view of ``/engine/status``."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency

from gateway.metrics import CONTENT_TYPE
from gateway.state import GatewayState


class SystemController(Controller):
    @get("/health")
    async def health(self) -> dict[str, str]:
        # Liveness only: the process answers. Readiness of engines is /engine/health (issue 3).
        return {"status": "ok"}

    @get("/metrics")
    async def metrics(self, gateway: NamedDependency[GatewayState]) -> Response[bytes]:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    @get("/engine/status")
    async def engine_status(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        providers = {}
        for name, provider in sorted(gateway.config.providers.items()):
            probe = gateway.probes.get(name)
            providers[name] = {
                "kind": provider.kind,
                "base_url": provider.base_url,
                "local": provider.is_local,
                "available": bool(probe and probe.available),
                "detail": probe.detail if probe else "not probed yet",
            }
        targets = {
            key: {
                "inflight": state.inflight,
                "cooling_down": state.cooling_until > time.monotonic(),
                "consecutive_failures": state.consecutive_failures,
                "last_error": state.last_error,
            }
            for key, state in ((k, gateway.book.state(k)) for k in gateway.book)
        }
        return {"providers": providers, "targets": targets}
