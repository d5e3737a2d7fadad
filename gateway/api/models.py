"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models the calling key may use.

Two shapes. OpenAI's list (``object: "list"``) by default; Anthropic's Models API
(``type: "model"``, ``display_name``, ``created_at``, ``has_more``, ``first_id``, ``last_id``)
when the request carries ``anthropic-version``, as Anthropic's SDK and Claude Code's gateway
model discovery send it. Both say each model's context window: for a local role, what its
engine reports while loaded (llama-server ``/props``), else the role's configured ``context``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from adapters.base import ContextReporter
from gateway.auth import may_use
from gateway.config.roles import ROLE_PREFIX
from gateway.config.upstreams import Model, Target
from gateway.engines.states import EngineState
from gateway.errors import ModelNotFound, UpstreamError
from gateway.guards import api_caller
from gateway.router import eligible
from gateway.state import GatewayState

# Release dates are unknown for local models; Anthropic's API documents the epoch for that.
EPOCH = "1970-01-01T00:00:00Z"
# A loaded engine that does not answer /props this fast gets its configured context instead.
PROPS_TIMEOUT = 2.0


class ModelsController(Controller):
    path = "/v1/models"
    guards = (api_caller,)

    @get("/")
    async def list_models(
        self, request: Request[Any, Any, Any], gateway: NamedDependency[GatewayState]
    ) -> dict[str, Any]:
        models = _visible(gateway, request)
        contexts = await _contexts(gateway, models)
        if _anthropic(request):
            return anthropic_list(models, contexts)
        data: list[dict[str, Any]] = []
        for model in models:
            data.extend(_openai_entries(gateway, model, contexts))
        return {"object": "list", "data": data}

    @get("/{model_id:str}")
    async def get_model(
        self,
        request: Request[Any, Any, Any],
        gateway: NamedDependency[GatewayState],
        model_id: FromPath[str],
    ) -> dict[str, Any]:
        for model in _visible(gateway, request):
            if model_id == model.name or model_id in model.aliases:
                contexts = await _contexts(gateway, [model])
                if _anthropic(request):
                    return anthropic_entry(model_id, model, contexts.get(model.name))
                return next(
                    e for e in _openai_entries(gateway, model, contexts) if e["id"] == model_id
                )
        # The app's error handler answers in Anthropic's envelope when anthropic-version is sent.
        raise ModelNotFound(f"model {model_id!r} not found", param="model_id")


def _anthropic(request: Request[Any, Any, Any]) -> bool:
    return "anthropic-version" in request.headers


def _visible(gateway: GatewayState, request: Request[Any, Any, Any]) -> list[Model]:
    """Only what the caller's key may use: a key limited to ``fast`` sees ``fast``."""
    identity = gateway.auth.identify(request.scope)  # type: ignore[arg-type]
    return [m for m in gateway.models.models if may_use(identity, m.name)]


# --- the Anthropic shape (pure) ------------------------------------------------------------------


def anthropic_entry(model_id: str, model: Model, context: int | None) -> dict[str, Any]:
    """One ``ModelInfo``: Anthropic's fields, ``max_input_tokens`` being the context window."""
    alias_of = model.name if model_id != model.name else None
    display = model.description or model.name
    entry: dict[str, Any] = {
        "type": "model",
        "id": model_id,
        "display_name": f"{model_id} ({model.name})" if alias_of else display,
        "created_at": EPOCH,
        "lifecycle": "active",
        "max_input_tokens": context,
        "context_window": context,
    }
    return entry


def anthropic_list(models: list[Model], contexts: dict[str, int]) -> dict[str, Any]:
    """Every model and alias, one page (``has_more: false``), in routing.yaml's order."""
    data = [
        anthropic_entry(name, model, contexts.get(model.name))
        for model in models
        for name in (model.name, *model.aliases)
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


# --- the OpenAI shape ------------------------------------------------------------------------------


def _openai_entries(
    gateway: GatewayState, model: Model, contexts: dict[str, int]
) -> list[dict[str, Any]]:
    targets = [_target(gateway, model, t, contexts) for t in model.targets]
    available = any(t["available"] for t in targets)
    context = contexts.get(model.name)
    entries = [
        {
            "id": model.name,
            "object": "model",
            "created": 0,
            "owned_by": "turnout",
            "aliases": list(model.aliases),
            "available": available,
            "local_only": model.local_only,
            "context_window": context,
            "targets": targets,
        }
    ]
    for alias in model.aliases:
        entries.append(
            {
                "id": alias,
                "object": "model",
                "created": 0,
                "owned_by": "turnout",
                "alias_of": model.name,
                "available": available,
                "context_window": context,
            }
        )
    return entries


def _target(
    gateway: GatewayState, model: Model, target: Target, contexts: dict[str, int]
) -> dict[str, Any]:
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
        "context_window": contexts.get(_key(target)),
    }


# --- context windows ---------------------------------------------------------------------------


def _key(target: Target) -> str:
    return f"{target.provider}/{target.model}"


async def _contexts(gateway: GatewayState, models: list[Model]) -> dict[str, int]:
    """Context window per target (``provider/model``) and per model (its first target's).

    A loaded engine is asked (all at once); a role that is not loaded has its configured
    ``context``, which is what turnout passes to the engine (``-c ${CTX}``) when it starts it.
    """
    targets = {_key(t): t for m in models for t in eligible(m, gateway.providers)}
    asked = await asyncio.gather(*(_ask(gateway, t) for t in targets.values()))
    found = {key: n for key, n in zip(targets, asked, strict=True) if n is not None}
    for key, target in targets.items():
        if key not in found and target.provider.startswith(ROLE_PREFIX):
            role = gateway.config.roles.get(target.provider[len(ROLE_PREFIX) :])
            if role is not None:
                found[key] = role.context
    for model in models:
        first = next(iter(eligible(model, gateway.providers)), None)
        if first is not None and _key(first) in found:
            found[model.name] = found[_key(first)]
    return found


async def _ask(gateway: GatewayState, target: Target) -> int | None:
    adapter = gateway.adapters.get(target.provider)
    provider = gateway.providers.get(target.provider)
    if not isinstance(adapter, ContextReporter) or provider is None or not provider.is_local:
        return None
    supervisor = gateway.supervisor
    if target.provider.startswith(ROLE_PREFIX):
        role = target.provider[len(ROLE_PREFIX) :]
        if supervisor is None or supervisor.status(role).state is not EngineState.READY:
            return None
    with contextlib.suppress(UpstreamError, TimeoutError):
        async with asyncio.timeout(PROPS_TIMEOUT):
            return await adapter.context_window(target.model)
    return None
