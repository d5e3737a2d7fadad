"""Before forwarding: which model, may this caller use it now, and what plugins change.

Identity -> model -> permission -> budget -> rate limits, then plugins' ``before_upstream``
(chat only). Every refusal is raised here, before any upstream is touched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import msgspec

from gateway.asgi import Headers, Scope, header
from gateway.auth import may_use
from gateway.errors import BudgetExceeded, Forbidden, ModelNotFound, RateLimited
from gateway.plugins.context import RequestContext
from gateway.tokens import admission_estimate

if TYPE_CHECKING:
    from gateway.budget import Budgets
    from gateway.config.upstreams import Model
    from gateway.pipeline.call import Call
    from gateway.plugins.context import Gateway
    from gateway.plugins.manager import PluginManager
    from gateway.ratelimit.limiter import Limiter
    from gateway.router import ModelTable
    from gateway.wire import ClientRequest


def resolve(models: ModelTable, request: ClientRequest) -> Model:
    model = models.resolve(request.model)
    if model is None:
        available = ", ".join(models.names()) or "(none)"
        raise ModelNotFound(
            f"model {request.model!r} not found; available models: {available}", param="model"
        )
    return model


async def admit(
    call: Call, model: Model, request: ClientRequest, budgets: Budgets, limiter: Limiter
) -> None:
    """Permissions, budget and rate limits; what was granted is kept in ``call.admission``."""
    identity = call.identity
    if not may_use(identity, model.name):
        raise Forbidden(f"this key may not use model {model.name!r}", param="model")
    if identity.key_id is not None or identity.project is not None:
        refusal = budgets.refusal(identity.key_id, identity.project)
        if refusal is None and budgets.ledger is not None:
            # Replicas on PostgreSQL: what the others spent too (a read per budgeted caller).
            refusal = await budgets.shared_refusal(identity.key_id, identity.project)
        if refusal is not None:
            raise BudgetExceeded(refusal)
    scopes = limiter.scopes(identity, model.name)
    if not scopes:
        return
    estimate = admission_estimate(call.body_bytes, request.max_tokens())
    admission = limiter.admit_nowait(scopes, estimate) or await limiter.admit(scopes, estimate)
    if not admission.allowed:
        raise RateLimited(admission.message(), headers=dict(_decoded(admission.headers())))
    call.admission = admission


async def before_upstream(
    plugins: PluginManager,
    gateway: Gateway,
    route: str,
    call: Call,
    model: Model,
    request: ClientRequest,
    scope: Scope,
) -> ClientRequest:
    """Plugins' request hooks; the request to forward (without its native body if edited)."""
    fields = request.fields
    hooked = call.hooked = RequestContext(
        call.request_id, call.identity, model.name, route, fields, request.stream, gateway
    )
    session = header(scope, b"x-session-id")
    if session:
        hooked.session_id = session.decode("latin-1")[:256]
    before = dict(fields) if request.native is not None else None
    await plugins.before_upstream(hooked)
    if before is not None and _edited(before, fields):
        # An upstream that speaks the client's own protocol would be sent the original
        # body and miss what plugins changed: it gets the edited translation instead.
        return replace(request, native=None)
    return request


def _edited(before: dict[str, msgspec.Raw], after: dict[str, msgspec.Raw]) -> bool:
    """Did plugins change any field? Values are immutable, so a change is a new object."""
    return len(before) != len(after) or any(after.get(k) is not v for k, v in before.items())


def _decoded(headers: Headers) -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in headers]
