"""Seed 004's internal LLM proxy, ``POST /internal/llm/proxy``, on the shared chat pipeline.

The request is an OpenAI chat request with fewer fields (``model``, ``messages``,
``metadata: {agent_id, microdao_id, channel_id}``), so it is decoded and forwarded as one:
keys, agents, limits, budgets, plugins, fallback and the usage row all apply as on
``/v1/chat/completions``. ``metadata`` names the agent for trusted callers, and the project
and channel in the usage log. The answer is seed 004's::

    {"content": "...", "usage": {"prompt_tokens": 1, "completion_tokens": 2,
     "total_tokens": 3}, "provider": "openai", "model_resolved": "gpt-4.1-mini"}

where ``provider`` is the provider that answered (after any fallback) and ``model_resolved``
the model name it was sent. Tool calls, when the model made some, come as ``tool_calls`` in
OpenAI's shape. Whole answers only: streams are served by ``/v1/chat/completions``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.asgi import Scope
from gateway.config.upstreams import Target
from gateway.contract import Operation, WireProtocol
from gateway.errors import BadRequest, GatewayError, UpstreamProtocolError, openai_envelope
from gateway.pipeline.call import Dialect, Exchange
from gateway.pipeline.endpoint import EndpointFactory, ingress
from gateway.streaming import KEEPALIVE, StreamTranslator
from gateway.wire import ClientRequest, Usage, decode_request

ROUTE = "llm_proxy"


class ProxyUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ProxyReply(msgspec.Struct, omit_defaults=True):
    content: str
    usage: ProxyUsage
    provider: str
    model_resolved: str
    tool_calls: list[dict[str, Any]] | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice] = []
    usage: Usage | None = None


_COMPLETION = msgspec.json.Decoder(_Completion)
_encode = msgspec.json.Encoder().encode


class ProxyExchange:
    __slots__ = ("request",)

    def __init__(self, request: ClientRequest) -> None:
        self.request = request

    def reply(
        self, body: bytes, protocol: WireProtocol = WireProtocol.OPENAI
    ) -> tuple[bytes, Usage | None]:
        return render(self, body, protocol, None)

    def stream(self) -> StreamTranslator:
        raise AssertionError("/internal/llm/proxy never streams")  # refused in prepare()


def prepare(body: bytes, scope: Scope) -> ProxyExchange:
    request = decode_request(Operation.CHAT, body)
    if request.stream:
        raise BadRequest(
            "/internal/llm/proxy answers whole replies; stream with /v1/chat/completions",
            param="stream",
        )
    return ProxyExchange(request)


def render(
    exchange: Exchange, body: bytes, protocol: WireProtocol, target: Target | None
) -> tuple[bytes, Usage | None]:
    """The upstream's chat completion in seed 004's shape, naming who answered."""
    # OpenAI chat requests carry no native body: ``protocol`` is always OpenAI's here.
    try:
        completion = _COMPLETION.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UpstreamProtocolError(
            f"upstream sent something that is not OpenAI chat: {exc}"
        ) from None
    message = completion.choices[0].message if completion.choices else None
    usage = completion.usage
    counted = ProxyUsage()
    if usage is not None:
        total = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        counted = ProxyUsage(usage.prompt_tokens, usage.completion_tokens, total)
    reply = ProxyReply(
        content=(message.content or "") if message is not None else "",
        usage=counted,
        provider=target.provider if target is not None else "",
        model_resolved=target.model if target is not None else "",
        tool_calls=message.tool_calls or None if message is not None else None,
    )
    return _encode(reply), usage


def _error_body(error: GatewayError, request_id: str) -> bytes:
    return openai_envelope(error)


LLM_PROXY = Dialect(
    route=ROUTE, prepare=prepare, error_body=_error_body, keepalive=KEEPALIVE, render=render
)


# Path -> endpoint for seed 004's ``/internal/llm/*`` API.
ENDPOINTS: dict[str, EndpointFactory] = {"/internal/llm/proxy": ingress(LLM_PROXY)}
