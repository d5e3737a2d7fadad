"""llama.cpp ``llama-server``: OpenAI-compatible, with two differences worth hiding.

- A tool-call reply carries ``content: ""`` where OpenAI (and MLX) send ``null``; clients that
  test ``content is None`` to detect tool calls would misread it.
- Health lives at the server root (``/health``: 503 while loading, 200 when ready), not under ``/v1``.

It also offers two optional capabilities (``adapters.base``): counting a chat request's prompt
tokens with the engine's own template and tokenizer (``/v1/chat/completions/input_tokens``, or
``/apply-template`` + ``/tokenize`` on builds without it), and the context the engine really
runs with (``/props``). A prompt over that context is refused by the engine with
``exceed_context_size_error``; that becomes ``ContextExceeded`` here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from adapters.base import AdapterRegistry, Operation, Probe, UpstreamReply, UpstreamRequest
from adapters.http import decode_json_object, mapped_client_errors, probe_timeout
from adapters.llamacpp_slots import LlamaCppSlots
from adapters.openai_compat import OpenAICompatAdapter, SSEStream
from gateway.config.upstreams import Provider
from gateway.errors import ContextExceeded, UpstreamProtocolError, UpstreamStatus

_encode = msgspec.json.Encoder().encode


class LlamaCppAdapter(LlamaCppSlots, OpenAICompatAdapter):
    # It reads reasoning_content on assistant messages (its chat templates decide what to keep).
    takes_reasoning_history = True

    def __init__(self, name: str, provider: Provider, session: aiohttp.ClientSession) -> None:
        super().__init__(name, provider, session)
        parts = urlsplit(provider.base_url)
        self._health_url = urlunsplit((parts.scheme, parts.netloc, "/health", "", ""))
        self._root = urlunsplit((parts.scheme, parts.netloc, "", "", ""))

    def fix_reply(self, op: Operation, body: bytes) -> bytes:
        # Cheap byte test first: only tool-call replies need the decode/encode round trip.
        if op is not Operation.CHAT or b'"tool_calls"' not in body or b'"content":""' not in body:
            return body
        reply = decode_json_object(body)
        if reply is None:
            return body
        for choice in reply.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if (
                isinstance(message, dict)
                and message.get("tool_calls")
                and message.get("content") == ""
            ):
                message["content"] = None
        return _encode(reply)

    async def probe(self) -> Probe:
        return await self._probe_url(self._health_url)

    def encode_body(self, request: UpstreamRequest) -> bytes:
        body = super().encode_body(request)
        if request.stream and request.translated:
            # The first chunk then carries prompt_progress (total and cached prompt tokens,
            # sent before prefill starts), so a translated stream can say its input tokens in
            # message_start at no cost. Only for translated streams: a chat client that did
            # not ask for these chunks gets its stream byte for byte.
            body = body[:-1] + b',"return_progress":true}'
        return body

    # A plain try (free in Python 3.11+) rather than a context manager: this is every request.
    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        try:
            return await super().send(request)
        except UpstreamStatus as exc:
            raise _context_error(exc) from None

    async def open_stream(self, request: UpstreamRequest) -> SSEStream:
        try:
            return await super().open_stream(request)
        except UpstreamStatus as exc:
            raise _context_error(exc) from None

    # --- optional capabilities (adapters.base.TokenCounter, ContextReporter) ------------------

    async def count_tokens(self, request: UpstreamRequest) -> int:
        """The engine's own count of the templated prompt, exactly what a chat call would prefill."""
        body = self.encode_body(request)
        try:
            reply = await self._post_json("/v1/chat/completions/input_tokens", body)
        except UpstreamStatus as exc:
            if exc.upstream_status != 404:
                raise
            # Older llama-server builds: template, then tokenize the way a completion does.
            templated = await self._post_json("/apply-template", body)
            tokens = await self._post_json(
                "/tokenize",
                _encode({"content": templated.get("prompt"), "add_special": True}),
            )
            return _count(tokens.get("tokens"), "/tokenize")
        return _count(reply.get("input_tokens"), "/v1/chat/completions/input_tokens")

    async def context_window(self, model: str) -> int | None:
        """``n_ctx`` of a slot from ``/props``: what one request may fill (prompt + answer)."""
        timeout = probe_timeout(self.provider.timeouts)
        with mapped_client_errors():
            async with self._session.get(self._root + "/props", timeout=timeout) as response:
                data = await response.read()
        props = decode_json_object(data) if response.status == 200 else None
        settings = props.get("default_generation_settings") if props else None
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None

    async def _post_json(self, path: str, body: bytes) -> dict[str, Any]:
        with mapped_client_errors():
            async with self._session.post(
                self._root + path, data=body, headers=self._headers, timeout=self._send_timeout
            ) as response:
                data = await response.read()
        if response.status >= 400:
            raise UpstreamStatus(response.status, data)
        reply = decode_json_object(data)
        if reply is None:
            raise UpstreamProtocolError(f"{path} did not answer a JSON object")
        return reply


class _ContextError(msgspec.Struct):
    type: str = ""
    n_prompt_tokens: int = 0
    n_ctx: int = 0


class _ContextErrorBody(msgspec.Struct):
    error: _ContextError | None = None


_CONTEXT_ERROR = msgspec.json.Decoder(_ContextErrorBody)


def _context_error(exc: UpstreamStatus) -> UpstreamStatus | ContextExceeded:
    """llama-server's 400 ``exceed_context_size_error`` (it carries both numbers) → ContextExceeded."""
    if exc.upstream_status != 400 or b"exceed_context_size_error" not in exc.body:
        return exc
    try:
        error = _CONTEXT_ERROR.decode(exc.body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return exc
    if error is None or error.n_ctx <= 0:
        return exc
    return ContextExceeded(error.n_prompt_tokens, error.n_ctx)


def _count(value: object, path: str) -> int:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise UpstreamProtocolError(f"{path} answered no token count")


def _factory(name: str, provider: Provider, session: aiohttp.ClientSession) -> LlamaCppAdapter:
    return LlamaCppAdapter(name, provider, session)


def register(registry: AdapterRegistry) -> None:
    registry.register("llamacpp", _factory)
