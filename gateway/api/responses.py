"""OpenAI's Responses API over any chat-completions upstream: ``POST /v1/responses``.

Codex CLI speaks only this API. Keep-alives are SSE comments, which every Responses client
skips; errors use OpenAI's envelope before the stream starts and ``response.failed`` after.
"""

from __future__ import annotations

import time

from gateway.api.ingress import Dialect, Exchange, IngressEndpoint
from gateway.asgi import Scope
from gateway.errors import GatewayError, openai_envelope
from gateway.state import GatewayState
from gateway.streaming import KEEPALIVE
from gateway.translate import responses


def _prepare(body: bytes, scope: Scope) -> Exchange:
    return responses.prepare(body, int(time.time()))


def _error_body(error: GatewayError, request_id: str) -> bytes:
    return openai_envelope(error)


RESPONSES = Dialect(
    route="responses", prepare=_prepare, error_body=_error_body, keepalive=KEEPALIVE
)


def responses_endpoints(state: GatewayState) -> dict[str, IngressEndpoint]:
    """Path → endpoint for OpenAI's Responses API."""
    return {"/v1/responses": IngressEndpoint(state, RESPONSES)}
