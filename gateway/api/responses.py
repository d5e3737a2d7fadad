"""OpenAI's Responses API over any chat-completions upstream: ``POST /v1/responses``.

Codex CLI speaks only this API. Keep-alives are SSE comments, which every Responses client
skips; errors use OpenAI's envelope before the stream starts and ``response.failed`` after.
"""

from __future__ import annotations

import time

from gateway.asgi import Scope
from gateway.errors import GatewayError, openai_envelope
from gateway.pipeline.call import Dialect, Exchange
from gateway.pipeline.endpoint import EndpointFactory, ingress
from gateway.streaming import KEEPALIVE
from gateway.translate import responses


def _prepare(body: bytes, scope: Scope) -> Exchange:
    return responses.prepare(body, int(time.time()))


def _error_body(error: GatewayError, request_id: str) -> bytes:
    return openai_envelope(error)


RESPONSES = Dialect(
    route="responses", prepare=_prepare, error_body=_error_body, keepalive=KEEPALIVE
)


# Path -> endpoint for OpenAI's Responses API.
ENDPOINTS: dict[str, EndpointFactory] = {"/v1/responses": ingress(RESPONSES)}
