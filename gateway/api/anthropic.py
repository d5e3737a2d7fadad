"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Claude Code posts to ``/v1/messages?beta=true`` (the query string changes nothing here), always
streams, and accepts ``event: ping`` as keep-alive while a local engine reads a long prompt.
"""

from __future__ import annotations

import logging
import random
import time

import msgspec

from adapters.base import TokenCounter, UpstreamRequest, native_for
from gateway.asgi import JSON, Receive, Scope, Send, header, read_body, send_bytes
from gateway.auth import may_use
from gateway.config.roles import ROLE_PREFIX
from gateway.config.upstreams import Model, Target
from gateway.engines.states import EngineState
from gateway.errors import (
    ClientGone,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    UpstreamError,
)
from gateway.pipeline.call import Dialect, Exchange, new_request_id
from gateway.pipeline.endpoint import EndpointFactory, ingress
from gateway.router import plan
from gateway.state import GatewayState
from gateway.translate import anthropic, encode
from gateway.translate.anthropic_replies import error_body
from gateway.wire import ClientRequest

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
    """``{"input_tokens": N}`` for a Messages request, counted by whoever would serve it.

    Authenticated and permission-checked exactly like ``/v1/messages``. The count comes from the
    model's first target in routing order (the one a request would reach first):

    - an upstream that counts (``adapters.base.TokenCounter``): llama-server counts with its own
      chat template and tokenizer, Anthropic's API with its own endpoint; the answer carries
      ``x-turnout-token-count: upstream``;
    - otherwise, or when that upstream cannot answer: the estimate in
      ``gateway.translate.anthropic.count_tokens``, marked ``x-turnout-token-count: estimate``.

    Counting never starts or swaps a local engine: a role that is not ready gets the estimate
    (a count must not cost a 10-60 s model load, nor evict the role another client is using).
    Counting does not use the rate limits' request budget; it is no inference.
    """

    def __init__(self, state: GatewayState) -> None:
        self._state = state
        self._rng = random.Random()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = (header(scope, b"x-request-id") or b"").decode("latin-1")[
            :128
        ] or new_request_id()
        headers = [(b"x-request-id", request_id.encode()), (b"request-id", request_id.encode())]
        metrics = self._state.metrics
        started = time.perf_counter()
        status = 200
        model_name = "-"
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['path']} accepts POST only")
            identity = self._state.auth.identify(scope)
            body = await read_body(scope, receive, self._state.config.server.max_body_bytes)
            exchange = _prepare(body, scope)
            model = self._resolve(exchange.request.model)
            model_name = model.name
            if not may_use(identity, model.name):
                raise Forbidden(f"this key may not use model {model.name!r}", param="model")
            tokens, source, target = await self._count(model, exchange.request, body, request_id)
            headers.append((b"x-turnout-token-count", source.encode()))
            if target is not None:
                headers.append((b"x-turnout-target", f"{target.provider}/{target.model}".encode()))
            await send_bytes(send, 200, encode({"input_tokens": tokens}), JSON, headers)
        except GatewayError as exc:
            status = exc.status
            headers.extend((k.lower().encode(), v.encode()) for k, v in exc.headers.items())
            await send_bytes(send, status, error_body(exc, request_id), JSON, headers)
        except ClientGone:
            status = 499
        finally:
            metrics.child(metrics.requests, "count_tokens", model_name, str(status)).inc()
            metrics.child(metrics.overhead, "count_tokens").observe(time.perf_counter() - started)

    def _resolve(self, name: str) -> Model:
        model = self._state.models.resolve(name)
        if model is None:
            available = ", ".join(self._state.models.names()) or "(none)"
            raise ModelNotFound(
                f"model {name!r} not found; available models: {available}", param="model"
            )
        return model

    async def _count(
        self, model: Model, request: ClientRequest, body: bytes, request_id: str
    ) -> tuple[int, str, Target | None]:
        state = self._state
        targets = plan(model, state.providers, state.book, time.monotonic(), self._rng)
        target = targets[0] if targets else None
        adapter = state.adapters.get(target.provider) if target is not None else None
        if target is not None and isinstance(adapter, TokenCounter) and self._loaded(target):
            native = native_for(adapter, request.native)
            upstream = UpstreamRequest(
                request.op, request.fields, target.model, False, request_id, native, True
            )
            try:
                tokens = await adapter.count_tokens(upstream)
            except UpstreamError as exc:
                log.info(
                    "count_tokens %s: %s could not count (%s)", request_id, target.provider, exc
                )
            else:
                return tokens, "upstream", target
        estimate = _ESTIMATE.decode(anthropic.count_tokens(body)).input_tokens
        return estimate, "estimate", target

    def _loaded(self, target: Target) -> bool:
        """A local role counts only while it is ready: counting never loads or swaps a model."""
        supervisor = self._state.supervisor
        if not target.provider.startswith(ROLE_PREFIX) or supervisor is None:
            return True
        role = target.provider[len(ROLE_PREFIX) :]
        return role in supervisor.roles and supervisor.status(role).state is EngineState.READY


class _Counted(msgspec.Struct):
    input_tokens: int


_ESTIMATE = msgspec.json.Decoder(_Counted)


# Path -> endpoint for Anthropic's Messages API.
ENDPOINTS: dict[str, EndpointFactory] = {
    "/v1/messages": ingress(MESSAGES),
    "/v1/messages/count_tokens": CountTokensEndpoint,
}
