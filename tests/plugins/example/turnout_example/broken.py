"""A plugin that fails in both request hooks; a module of hook functions, not a class."""

from __future__ import annotations

from gateway.plugins.context import Exchanged, RequestContext
from gateway.plugins.hookspecs import hookimpl


@hookimpl
async def before_upstream(request: RequestContext) -> None:
    raise RuntimeError(f"broken before_upstream for {request.request_id}")


@hookimpl
def after_response(exchanged: Exchanged) -> None:
    # Synchronous, and asking for one argument only: both are allowed.
    raise ValueError(f"broken after_response (status {exchanged.status})")
