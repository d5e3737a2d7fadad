"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Claude Code posts to ``/v1/messages?beta=true`` (the query string changes nothing here), always
streams, and accepts ``event: ping`` as keep-alive while a local engine reads a long prompt.
"""

from __future__ import annotations

import logging
import time

from gateway.api.ingress import Dialect, Exchange, IngressEndpoint, new_request_id
from gateway.asgi import JSON, ClientGone, Receive, Scope, Send, header, read_body, send_bytes
from gateway.errors import GatewayError, MethodNotAllowed
from gateway.state import GatewayState
from gateway.translate import anthropic
from gateway.translate.anthropic_replies import error_body

log = logging.getLogger("turnout.anthropic")

PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def _prepare(body: bytes, scope: Scope) -> Exchange:
    forwarded = {}
    for name in anthropic.FORWARDED_HEADERS:
        value = header(scope, name.encode())
        if value is not None:
            forwarded[name] = value.decode("latin-1")
    return anthropic.prepare(body, forwarded)


MESSAGES = Dialect(
    route="messages",
    prepare=_prepare,
    error_body=error_body,
    keepalive=PING,
    id_header=b"request-id",
)


class CountTokensEndpoint:
    """An estimate computed here: no upstream call, the same answer for every target."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = (header(scope, b"x-request-id") or b"").decode("latin-1")[
            :128
        ] or new_request_id()
        headers = [(b"x-request-id", request_id.encode()), (b"request-id", request_id.encode())]
        metrics = self._state.metrics
        started = time.perf_counter()
        status = 200
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['path']} accepts POST only")
            body = await read_body(scope, receive, self._state.config.server.max_body_bytes)
            await send_bytes(send, 200, anthropic.count_tokens(body), JSON, headers)
        except GatewayError as exc:
            status = exc.status
            await send_bytes(send, status, error_body(exc, request_id), JSON, headers)
        except ClientGone:
            status = 499
        finally:
            metrics.child(metrics.requests, "count_tokens", "-", str(status)).inc()
            metrics.child(metrics.overhead, "count_tokens").observe(time.perf_counter() - started)


def anthropic_endpoints(
    state: GatewayState,
) -> dict[str, IngressEndpoint | CountTokensEndpoint]:
    """Path → endpoint for Anthropic's Messages API."""
    return {
        "/v1/messages": IngressEndpoint(state, MESSAGES),
        "/v1/messages/count_tokens": CountTokensEndpoint(state),
    }
