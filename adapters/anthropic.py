"""Anthropic's Messages API as an upstream (kind ``anthropic``): OpenAI chat in, OpenAI chat out.

A request that came in through the Anthropic ingress carries its original body
(``gateway.translate.Translated``): it is sent as it came, with the target's model name and the
client's ``anthropic-beta``, and the answer is relayed in Anthropic's own format, which that
ingress recognises. Nothing is lost in a round trip through OpenAI's shape: thinking blocks and
their signatures, cache breakpoints, beta features.

Every other request (OpenAI chat, Responses) is translated both ways by
``gateway.translate.anthropic_upstream``.

``base_url`` is Anthropic's (``https://api.anthropic.com``), with or without ``/v1``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping

import aiohttp
import msgspec

from adapters.base import AdapterRegistry, Operation, Probe, UpstreamReply, UpstreamRequest
from adapters.openai_compat import (
    SSEStream,
    mapped_client_errors,
    open_event_stream,
    whole_answer_timeout,
)
from gateway.config import Provider
from gateway.errors import UpstreamError, UpstreamProtocolError, UpstreamStatus
from gateway.translate import FIELDS, encode, native_of, raw
from gateway.translate.anthropic_upstream import ChatChunks, chat_reply, messages_body

ANTHROPIC_VERSION = "2023-06-01"

# What Anthropic's count_tokens accepts; it refuses anything else ("Extra inputs are not
# permitted"), and a Messages body carries more (max_tokens, stream, temperature, metadata...).
_COUNT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "context_management",
        "output_config",
        "output_format",
    }
)


class AnthropicStream:
    """Anthropic's event stream, translated to OpenAI chunks (or relayed as is, when native).

    A plain async iterator, like ``SSEStream`` and for the same reason: a relay cancelled
    while it waits for the next event must still be able to close the stream.
    """

    __slots__ = ("_chunks", "_events", "_ready")

    def __init__(self, events: SSEStream, chunks: ChatChunks | None) -> None:
        self._events = events
        self._chunks = chunks
        # Chunks translated from one upstream event and not handed out yet.
        self._ready: deque[bytes] = deque()

    def __aiter__(self) -> AnthropicStream:
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        if chunks is None:
            return await self._events.__anext__()
        while not self._ready:
            self._ready.extend(chunks.feed(await self._events.__anext__()))
        return self._ready.popleft()

    async def aclose(self) -> None:
        await self._events.aclose()


# --- the adapter ---------------------------------------------------------------------------------


class AnthropicAdapter:
    def __init__(self, name: str, provider: Provider, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.provider = provider
        self._session = session
        base = provider.base_url.rstrip("/")
        root = base.removesuffix("/v1")
        self._messages_url = root + "/v1/messages"
        self._count_url = root + "/v1/messages/count_tokens"
        self._models_url = root + "/v1/models"
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        headers.update({k.lower(): v for k, v in provider.headers.items()})
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        self._headers = headers
        t = provider.timeouts
        self._send_timeout = whole_answer_timeout(t)
        # Streams are bounded by SSEStream's deadlines instead.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=t.connect, sock_read=None
        )

    def _encode(self, request: UpstreamRequest) -> tuple[bytes, dict[str, str], bool]:
        """Body, headers, and whether the answer comes back in Anthropic's format."""
        native = native_of(request.fields, "anthropic")
        if native is not None:
            fields = dict(native.fields)
            fields["model"] = raw(request.model)
            return encode(fields), self._native_headers(native.headers), True
        if request.op is not Operation.CHAT:
            # Retryable: another target of the same model may serve it.
            raise UpstreamError(
                f"{self.name}: Anthropic upstreams serve chat only, not {request.op.value}"
            )
        return messages_body(request.fields, request.model, request.stream), self._headers, False

    def _native_headers(self, client: Mapping[str, str]) -> dict[str, str]:
        headers = dict(self._headers)
        if "anthropic-version" in client:
            headers["anthropic-version"] = client["anthropic-version"]
        betas = [b for b in (headers.get("anthropic-beta"), client.get("anthropic-beta")) if b]
        if betas:
            headers["anthropic-beta"] = ",".join(
                dict.fromkeys(b.strip() for value in betas for b in value.split(",") if b.strip())
            )
        return headers

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        body, headers, native = self._encode(request)
        with mapped_client_errors():
            async with self._session.post(
                self._messages_url, data=body, headers=headers, timeout=self._send_timeout
            ) as response:
                data = await response.read()
                if response.status >= 400:
                    raise UpstreamStatus(response.status, data, retry_after=_retry_after(response))
        return UpstreamReply(
            response.status, data if native else chat_reply(data, int(time.time()))
        )

    async def open_stream(self, request: UpstreamRequest) -> AnthropicStream:
        body, headers, native = self._encode(request)
        t = self.provider.timeouts
        started = asyncio.get_running_loop().time()
        response = await open_event_stream(
            self._session, self._messages_url, body, headers, self._stream_timeout, t
        )
        events = SSEStream(response, None, t, started)
        return AnthropicStream(events, None if native else ChatChunks(int(time.time())))

    async def count_tokens(self, request: UpstreamRequest) -> int:
        """Anthropic's own count (``/v1/messages/count_tokens``): free, and exact for its models."""
        body, headers, _ = self._encode(request)
        fields = FIELDS.decode(body)
        count = encode({k: v for k, v in fields.items() if k in _COUNT_FIELDS})
        with mapped_client_errors():
            async with self._session.post(
                self._count_url, data=count, headers=headers, timeout=self._send_timeout
            ) as response:
                data = await response.read()
                if response.status >= 400:
                    raise UpstreamStatus(response.status, data, retry_after=_retry_after(response))
        tokens = _input_tokens(data)
        if tokens is None:
            raise UpstreamProtocolError("count_tokens answered no input_tokens")
        return tokens

    async def probe(self) -> Probe:
        if self.provider.missing_env:
            return Probe(
                False, f"environment variable {', '.join(self.provider.missing_env)} not set"
            )
        if not self.provider.is_local:
            # Probing a cloud API costs the user a request; a configured key is the best we know.
            return Probe(True, "cloud provider with API key configured")
        timeout = aiohttp.ClientTimeout(total=min(2.0, self.provider.timeouts.connect + 1))
        try:
            with mapped_client_errors():
                async with self._session.get(
                    self._models_url, headers=self._headers, timeout=timeout
                ) as response:
                    await response.read()
                    if response.status == 200:
                        return Probe(True, "ready")
                    return Probe(False, f"{self._models_url} answered HTTP {response.status}")
        except UpstreamError as exc:
            return Probe(False, exc.message)

    async def close(self) -> None:
        # The session is shared and owned by the app state.
        return None


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _input_tokens(data: bytes) -> int | None:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    tokens = value.get("input_tokens") if isinstance(value, dict) else None
    return tokens if isinstance(tokens, int) and tokens >= 0 else None


def _factory(name: str, provider: Provider, session: aiohttp.ClientSession) -> AnthropicAdapter:
    return AnthropicAdapter(name, provider, session)


def register(registry: AdapterRegistry) -> None:
    registry.register("anthropic", _factory)
