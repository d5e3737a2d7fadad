"""``/v1/captures``: the last captured exchanges, for debugging (admin only; routing.yaml
``capture``, off by default).

    curl localhost:8080/v1/captures          # summaries, newest first
    curl localhost:8080/v1/captures/12       # one exchange: headers and bodies, redacted
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from gateway.errors import NotFound
from gateway.guards import administrator
from gateway.state import GatewayState

_OFF = "request capture is off: set capture.enabled: true in routing.yaml"


class CapturesController(Controller):
    path = "/v1/captures"
    guards = (administrator,)

    @get("/")
    async def list_captures(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        captures = gateway.captures
        if captures is None:
            return {"object": "list", "enabled": False, "hint": _OFF, "data": []}
        return {
            "object": "list",
            "enabled": True,
            "data": [entry.summary() for entry in captures.entries()],
        }

    @get("/{capture_id:int}")
    async def show_capture(
        self, gateway: NamedDependency[GatewayState], capture_id: FromPath[int]
    ) -> dict[str, Any]:
        captures = gateway.captures
        if captures is None:
            raise NotFound(_OFF)
        entry = captures.get(capture_id)
        if entry is None:
            raise NotFound(f"no capture {capture_id}: only the newest are kept")
        return entry.detail(captures.redactor)
