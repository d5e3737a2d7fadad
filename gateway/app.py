"""``create_app``: wiring only. Everything long-lived hangs off one ``GatewayState``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, InternalServerException
from litestar.handlers import ASGIRouteHandler, asgi

from adapters.base import AdapterRegistry
from adapters.builtin import default_registry
from gateway.api.anthropic import anthropic_endpoints
from gateway.api.engine import EngineController
from gateway.api.events import RequestsController
from gateway.api.ingress import new_request_id
from gateway.api.internal import internal_endpoints
from gateway.api.models import ModelsController
from gateway.api.proxy import proxy_endpoints
from gateway.api.responses import responses_endpoints
from gateway.api.system import SystemController
from gateway.api.usage import UsageController
from gateway.api.websocket import chat_socket
from gateway.asgi import Receive, Scope, Send, header
from gateway.config import Config
from gateway.errors import BadRequest, ErrorBody, ErrorEnvelope, GatewayError
from gateway.nesting import check_depth
from gateway.state import GatewayState
from gateway.translate.anthropic_replies import error_body as anthropic_error_body
from gateway.ui import DashboardController

log = logging.getLogger("turnout.app")

# The raw-ASGI endpoints mounted on the hot path (see gateway/asgi.py).
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(config: Config, registry: AdapterRegistry | None = None) -> Litestar:
    state = GatewayState(config, registry or default_registry())

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await state.start()
        # Everything built so far lives as long as the process: moving it out of the
        # collector's generations makes each full collection scan only per-request garbage
        # (measured here: gen2 pauses of 25-35 ms down to ~8 ms, and a lower p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await state.stop()

    async def provide_state() -> GatewayState:
        return state

    endpoints: dict[str, ASGIApp] = {
        **proxy_endpoints(state),
        **anthropic_endpoints(state),
        **responses_endpoints(state),
        **internal_endpoints(state),
    }
    handlers = [_mount(path, endpoint) for path, endpoint in endpoints.items()]
    return Litestar(
        route_handlers=[
            *handlers,
            ModelsController,
            SystemController,
            EngineController,
            UsageController,
            *state.plugins.routes(state),
            RequestsController,
            DashboardController,
            chat_socket(endpoints["/v1/chat/completions"]),
        ],
        dependencies={"gateway": Provide(provide_state, use_cache=True), **_narrow(state)},
        lifespan=[lifespan],
        # For tests and embedders: the running app's GatewayState (app.state.gateway).
        state=State({"gateway": state}),
        exception_handlers={
            HTTPException: _http_error,
            GatewayError: _gateway_error,
            Exception: _internal_error,
        },
        before_request=_refuse_deep_json,
        before_send=[_add_request_id],
        openapi_config=None,
        debug=False,
        # The CLI configures logging once; Litestar's own setup would format it differently.
        logging_config=None,
    )


def _narrow(state: GatewayState) -> dict[str, Provide]:
    """What controllers take instead of the whole state: each names only the parts it uses.

    ``usage`` and ``supervisor`` are read per request: the lifespan opens them.
    """
    return {
        "auth": Provide(lambda: state.auth, use_cache=True, sync_to_thread=False),
        "metrics": Provide(lambda: state.metrics, use_cache=True, sync_to_thread=False),
        "recent": Provide(lambda: state.recent, use_cache=True, sync_to_thread=False),
        "usage": Provide(lambda: state.usage, sync_to_thread=False),
        "supervisor": Provide(lambda: state.supervisor, sync_to_thread=False),
    }


def _mount(path: str, endpoint: ASGIApp) -> ASGIRouteHandler:
    async def forward(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(scope, receive, send)

    forward.__name__ = "forward_" + path.strip("/").replace("/", "_")
    return asgi(path, copy_scope=False)(forward)


async def _add_request_id(message: Any, scope: Any) -> None:
    """Every answer names its request; the raw-ASGI endpoints already did, so skip those."""
    if message["type"] == "http.response.start":
        headers = message.get("headers", ())
        if any(name == b"x-request-id" for name, _ in headers):
            return
        request_id = header(scope, b"x-request-id") or new_request_id().encode()
        message["headers"] = [*headers, (b"x-request-id", request_id[:128])]


def _gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    return _answer(request, exc)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's own errors (unknown path, wrong method) in the protocol's envelope."""
    if _client_left(exc):
        return _client_gone(request)
    if exc.status_code >= 500:
        return _internal_error(request, exc)
    error = BadRequest(_off_plugin(request, exc) or str(exc.detail), headers=exc.headers)
    error.status = exc.status_code
    error.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _answer(request, error)


def _off_plugin(request: Request[Any, Any, Any], exc: HTTPException) -> str | None:
    """A 404 under a path an installed plugin would mount had it been enabled says so."""
    if exc.status_code != 404:
        return None
    state: GatewayState = request.app.state["gateway"]
    name = state.plugins.disabled_route_owner(request.scope.get("path", ""))
    if name is None:
        return None
    return f"{name} is off: add {name} to plugins.enabled in routing.yaml"


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything unexpected: logged with its request id, answered as a 500 envelope.

    Without this Litestar answered ``{"status_code": 500, ...}`` and, with its logging off
    (``logging_config=None``), nobody heard of it. Raw-ASGI endpoints that let an exception
    escape before answering land here too.
    """
    request_id = _request_id(request)
    log.error(
        "request %s (%s %s) failed inside the gateway",
        request_id,
        request.method,
        request.scope.get("path", "?"),
        exc_info=exc,
    )
    error = GatewayError("the gateway failed to handle this request; see its log")
    return _answer(request, error, request_id)


def _client_left(exc: HTTPException) -> bool:
    """Litestar's way of saying the client went away while it read the body.

    A client that gives up mid-upload, or one the connection guard answered 408 and closed
    (gateway/connections.py), is no gateway failure: logging each as one, with a traceback,
    let a slowloris flood fill the log (issue 11).
    """
    return isinstance(exc, InternalServerException) and exc.detail == _CLIENT_LEFT


_CLIENT_LEFT = "client disconnected prematurely"


def _client_gone(request: Request[Any, Any, Any]) -> Response[Any]:
    # Nobody reads this answer; uvicorn drops it on the closed connection.
    log.debug(
        "request %s (%s %s): client left before its body arrived",
        _request_id(request),
        request.method,
        request.scope.get("path", "?"),
    )
    return Response(b"", status_code=499)


def _answer(
    request: Request[Any, Any, Any], error: GatewayError, request_id: str = ""
) -> Response[Any]:
    """``error`` in the envelope of the protocol its path speaks: Anthropic's on /v1/messages*."""
    headers = dict(error.headers)
    if _speaks_anthropic(request):
        request_id = request_id or _request_id(request)
        headers["x-request-id"] = request_id
        body = anthropic_error_body(error, request_id)
        return Response(body, status_code=error.status, headers=headers, media_type=_JSON)
    if request_id:
        headers["x-request-id"] = request_id
    return Response(
        ErrorEnvelope(ErrorBody(error.message, error.type, error.param, error.code)),
        status_code=error.status,
        headers=headers,
    )


def _speaks_anthropic(request: Request[Any, Any, Any]) -> bool:
    """/v1/messages*, and /v1/models* asked by Anthropic's SDK (it sends ``anthropic-version``;
    Claude Code's model discovery reads a 401 or 403 only in Anthropic's envelope)."""
    path: str = request.scope.get("path", "")
    if path.startswith("/v1/messages"):
        return True
    return path.startswith("/v1/models") and "anthropic-version" in request.headers


def _request_id(request: Request[Any, Any, Any]) -> str:
    return request.headers.get("x-request-id", "")[:128] or new_request_id()


_JSON = "application/json"


async def _refuse_deep_json(request: Request[Any, Any, Any]) -> None:
    """Controllers decode their JSON bodies after this; see gateway/nesting.py for why."""
    if request.method in _WITH_BODY:
        check_depth(await request.body())


_WITH_BODY = frozenset(("POST", "PUT", "PATCH"))
