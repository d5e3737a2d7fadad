"""``create_app``: wiring only. Everything long-lived hangs off one ``GatewayState``, built in
the lifespan from the ``Wiring`` the app is mounted with."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, InternalServerException, ValidationException
from litestar.handlers import ASGIRouteHandler, asgi

from adapters.base import AdapterRegistry
from adapters.builtin import default_registry
from gateway.api import anthropic, internal, proxy, responses
from gateway.api.captures import CapturesController
from gateway.api.engine import EngineController
from gateway.api.events import RequestsController
from gateway.api.keys import BudgetsController, KeysController
from gateway.api.models import ModelsController
from gateway.api.openapi import OpenAPIController
from gateway.api.responses_stored import StoredResponsesController
from gateway.api.system import SystemController
from gateway.api.usage import UsageController
from gateway.api.websocket import chat_socket
from gateway.asgi import Receive, Scope, Send, header
from gateway.config.schema import Config
from gateway.errors import BadRequest, ErrorBody, ErrorEnvelope, GatewayError
from gateway.field_errors import field_error
from gateway.framework import GatewayApp
from gateway.nesting import check_depth
from gateway.pipeline.call import new_request_id
from gateway.pipeline.endpoint import EndpointFactory, HotPaths, IngressEndpoint, Slot
from gateway.pipeline.run import Pipeline
from gateway.state import GatewayState, Wiring
from gateway.translate.anthropic_replies import error_body as anthropic_error_body
from gateway.ui import DashboardController

log = logging.getLogger("turnout.app")

# The raw-ASGI endpoints mounted on the hot path (see gateway/asgi.py).
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(
    config: Config, registry: AdapterRegistry | None = None, wiring: Wiring | None = None
) -> Litestar:
    """``wiring``: built from ``config`` already (by the start-up checks, gateway/preflight.py)."""
    wiring = wiring or Wiring.of(config, registry or default_registry())
    live = _Live()
    slots = {path: Slot() for path in INGRESS}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state = await GatewayState.open(wiring)
        try:
            for path, build in INGRESS.items():
                slots[path].endpoint = build(state)
            chat = slots["/v1/chat/completions"].endpoint
            assert isinstance(chat, IngressEndpoint)
            live.chat = chat.pipeline
            # For tests and embedders: the running app's GatewayState (app.state.gateway).
            live.state = app.state.gateway = state
            # Everything built so far lives as long as the process: moving it out of the
            # collector's generations makes each full collection scan only per-request garbage
            # (measured here: gen2 pauses of 25-35 ms down to ~8 ms, and a lower p99). No full
            # collection first: it found ~10 unreachable objects here, not worth the 35-65 ms of
            # readiness it cost on the bench machine (issue 13); they stay frozen, unfreed.
            gc.freeze()
            yield
        finally:
            await state.close()

    return GatewayApp(
        route_handlers=[
            *(_mount(path, slot) for path, slot in slots.items()),
            ModelsController,
            StoredResponsesController,
            SystemController,
            EngineController,
            UsageController,
            CapturesController,
            KeysController,
            BudgetsController,
            OpenAPIController,
            *wiring.plugins.routes(wiring),
            RequestsController,
            DashboardController,
            chat_socket(live.chat_pipeline),
        ],
        dependencies=_narrow(wiring, live),
        lifespan=[lifespan],
        # For ``serving_app``: the hot-path slots by path.
        state=State({"hot_paths": slots}),
        exception_handlers={
            HTTPException: _http_error,
            ValidationException: _validation_error,
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


def serving_app(
    app: Litestar, cancels_on_disconnect: bool, rest: ASGIApp | None = None
) -> HotPaths:
    """``app`` with its proxy endpoints answered before Litestar's routing (see HotPaths).

    ``cancels_on_disconnect``: the server runs gateway/connections.py's protocol, which
    cancels a request whose connection is lost. ``rest``: what answers the other paths and
    the lifespan instead of ``app`` itself (``app`` wrapped: see gateway/server.py).
    """
    # Litestar types its ASGI messages more narrowly.
    return HotPaths(app.state["hot_paths"], rest or cast(ASGIApp, app), cancels_on_disconnect)


# Every client protocol's endpoints, by path: the hot path, answered raw (gateway/asgi.py).
# Mounted when the app is built, before the gateway they serve exists; the lifespan builds each
# from the running state into its slot. A new client protocol is a module with its Dialect and
# ``ENDPOINTS``, plus one line here.
INGRESS: dict[str, EndpointFactory] = {
    **proxy.ENDPOINTS,
    **anthropic.ENDPOINTS,
    **responses.ENDPOINTS,
    **internal.ENDPOINTS,
}


class _Live:
    """The running gateway, for what ``create_app`` mounts before the lifespan builds it."""

    __slots__ = ("chat", "state")
    state: GatewayState
    # The pipeline of /v1/chat/completions, which chats on /v1/chat/ws run through too.
    chat: Pipeline

    def chat_pipeline(self) -> Pipeline:
        return self.chat


def _narrow(wiring: Wiring, live: _Live) -> dict[str, Provide]:
    """What controllers take instead of the whole state: each names only the parts it uses.

    Built from the config: cached. Opened by the lifespan: read from the running state.
    """
    return {
        "auth": Provide(lambda: wiring.auth, use_cache=True, sync_to_thread=False),
        "metrics": Provide(lambda: wiring.metrics, use_cache=True, sync_to_thread=False),
        "recent": Provide(lambda: wiring.recent, use_cache=True, sync_to_thread=False),
        "gateway": Provide(lambda: live.state, sync_to_thread=False),
        "usage": Provide(lambda: live.state.usage, sync_to_thread=False),
        "supervisor": Provide(lambda: live.state.supervisor, sync_to_thread=False),
    }


def _mount(path: str, slot: Slot) -> ASGIRouteHandler:
    async def forward(scope: Scope, receive: Receive, send: Send) -> None:
        await slot.endpoint(scope, receive, send)

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


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """A body (or query) Litestar decoded and refused: the 400 names the field, as wire.py's do."""
    return _answer(request, field_error(exc.extra, str(exc.detail)))


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
