"""``GET /v1/models``: logical models and their aliases, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.di import NamedDependency

from gateway.config import Model, Target
from gateway.guards import api_caller
from gateway.router import eligible
from gateway.state import GatewayState


class ModelsController(Controller):
    path = "/v1/models"
    guards = (api_caller,)

    @get("/")
    async def list_models(self, gateway: NamedDependency[GatewayState]) -> dict[str, Any]:
        data: list[dict[str, Any]] = []
        for model in gateway.models.models:
            targets = [_target(gateway, model, t) for t in model.targets]
            available = any(t["available"] for t in targets)
            data.append(
                {
                    "id": model.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "turnout",
                    "aliases": list(model.aliases),
                    "available": available,
                    "local_only": model.local_only,
                    "targets": targets,
                }
            )
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


def _target(gateway: GatewayState, model: Model, target: Target) -> dict[str, Any]:
    usable = target in eligible(model, gateway.providers)
    probe = gateway.availability(target.provider)
    if not usable and model.local_only and not gateway.providers[target.provider].is_local:
        detail = "excluded: model is local_only and this provider is not local"
    else:
        detail = probe.detail
    return {
        "provider": target.provider,
        "model": target.model,
        "available": usable and probe.available,
        "detail": detail,
    }
