"""``GET /v1/models``: logical models and their aliases, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.di import NamedDependency

from gateway.router import eligible
from gateway.state import GatewayState


class ModelsController(Controller):
    path = "/v1/models"

    @get("/")
    async def list_models(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        data: list[dict[str, Any]] = []
        for model in gateway.models.models:
            usable = eligible(model, gateway.config.providers)
            available = any(
                gateway.probes.get(t.provider) and gateway.probes[t.provider].available
                for t in usable
            )
            entry = {
                "id": model.name,
                "object": "model",
                "created": 0,
                "owned_by": "turnout",
                "aliases": list(model.aliases),
                "available": available,
                "local_only": model.local_only,
                "targets": [
                    {
                        "provider": t.provider,
                        "model": t.model,
                        "available": bool(
                            gateway.probes.get(t.provider) and gateway.probes[t.provider].available
                        )
                        and t in usable,
                        "detail": _detail(gateway, model.local_only, t.provider, t in usable),
                    }
                    for t in model.targets
                ],
            }
            data.append(entry)
            for alias in model.aliases:
                data.append(
                    {
                        "id": alias,
                        "object": "model",
                        "created": 0,
                        "owned_by": "turnout",
                        "alias_of": model.name,
                        "available": available,
                    }
                )
        return {"object": "list", "data": data}


def _detail(gateway: GatewayState, local_only: bool, provider: str, usable: bool) -> str:
    if not usable and local_only and not gateway.config.providers[provider].is_local:
        return "excluded: model is local_only and this provider is not local"
    probe = gateway.probes.get(provider)
    return probe.detail if probe is not None else "not probed yet"
