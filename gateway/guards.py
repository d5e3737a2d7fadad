"""Litestar guards for the controllers: API callers and administrators."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.state import GatewayState


def _state(connection: ASGIConnection[Any, Any, Any, Any]) -> GatewayState:
    state: GatewayState = connection.app.state["gateway"]
    return state


def api_caller(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Anyone the proxy endpoints would let in (raises the same 401)."""
    _state(connection).auth.identify(connection.scope)  # type: ignore[arg-type]


def administrator(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """/engine/* and admin endpoints: the admin key, or a local caller when none is set."""
    _state(connection).auth.require_admin(connection.scope)  # type: ignore[arg-type]


def local_page(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Open endpoints (metrics, dashboard files): a keyless gateway answers only its own names."""
    _state(connection).auth.check_local_page(connection.scope)  # type: ignore[arg-type]
