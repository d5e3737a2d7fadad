"""The Anthropic adapter: Anthropic's Messages API as an upstream.

A request that came in through the Anthropic ingress carries its original body
(``UpstreamRequest.native``): it is sent as it came, with the target's model name and the
client's ``anthropic-beta``, and the answer is relayed in Anthropic's own format, declared as
``WireProtocol.ANTHROPIC`` on the reply (the forwarder says the same of the stream). Nothing
is lost in a round trip through OpenAI's shape: thinking blocks and their signatures, cache
breakpoints, beta features.

Every other request (OpenAI chat, Responses) is translated both ways by
``adapters.anthropic.translate``.

``base_url`` is Anthropic's (``https://api.anthropic.com``), with or without ``/v1``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Mapping

import aiohttp
import msgspec

from adapters.anthropic.translate import ChatChunks, chat_reply, messages_body
from adapters.base import (
    AdapterRegistry,
    Operation,
    Probe,
    UpstreamReply,
    UpstreamRequest,
    WireProtocol,
)
from adapters.http import (
    open_event_stream,
    post_for_body,
    probe_url,
    stream_timeout,
    unprobed,
    whole_answer_timeout,
)
from adapters.openai_compat import SSEStream
from gateway.config.upstreams import Provider
from gateway.errors import ContextExceeded, UpstreamError, UpstreamProtocolError, UpstreamStatus
from gateway.translate import FIELDS, encode, raw

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
    # Requests that came in as Messages arrive with the client's own body (``native``).
    native_protocols = frozenset({WireProtocol.ANTHROPIC})

    def __init__(self, name: str, provider: Provider, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.provider = provider
        self._session = session
        base = provider.base_url.rstrip("/")
        root = base.removesuffix("/v1")
        self._messages_url = root + "/v1/messages"
        self._count_url = root + "/v1/messages/count_tokens"
        self._models_url = root + "/v1/models"
        # Anthropic's own key header, not a bearer token; lower-case names, as its SDK sends.
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        headers.update({k.lower(): v for k, v in provider.headers.items()})
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        self._headers = headers
        self._send_timeout = whole_answer_timeout(provider.timeouts)
        # Streams are bounded by SSEStream's deadlines instead.
        self._stream_timeout = stream_timeout(provider.timeouts)

    def _encode(self, request: UpstreamRequest) -> tuple[bytes, dict[str, str], bool]:
        """Body, headers, and whether the answer comes back in Anthropic's format."""
        native = request.native  # given only in a protocol this adapter speaks: Anthropic's
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
        try:
            status, data = await post_for_body(
                self._session,
                self._messages_url,
                body,
                headers,
                self._send_timeout,
                self.provider.timeouts.max_body_bytes,
            )
        except UpstreamStatus as exc:
            raise context_error(exc) from None
        if native:
            return UpstreamReply(status, data, protocol=WireProtocol.ANTHROPIC)
        return UpstreamReply(status, chat_reply(data, int(time.time())))

    async def open_stream(self, request: UpstreamRequest) -> AnthropicStream:
        body, headers, native = self._encode(request)
        t = self.provider.timeouts
        started = asyncio.get_running_loop().time()
        try:
            response = await open_event_stream(
                self._session, self._messages_url, body, headers, self._stream_timeout, t
            )
        except UpstreamStatus as exc:
            raise context_error(exc) from None
        events = SSEStream(response, None, t, started)
        return AnthropicStream(events, None if native else ChatChunks(int(time.time())))

    async def count_tokens(self, request: UpstreamRequest) -> int:
        """Anthropic's own count (``/v1/messages/count_tokens``): free, and exact for its models."""
        body, headers, _ = self._encode(request)
        fields = FIELDS.decode(body)
        count = encode({k: v for k, v in fields.items() if k in _COUNT_FIELDS})
        _, data = await post_for_body(
            self._session,
            self._count_url,
            count,
            headers,
            self._send_timeout,
            self.provider.timeouts.max_body_bytes,
        )
        tokens = _input_tokens(data)
        if tokens is None:
            raise UpstreamProtocolError("count_tokens answered no input_tokens")
        return tokens

    async def probe(self) -> Probe:
        unprobed_answer = unprobed(self.provider)
        if unprobed_answer is not None:
            return unprobed_answer
        return await probe_url(
            self._session, self._models_url, self._headers, self.provider.timeouts
        )

    async def close(self) -> None:
        # The session is shared and owned by the app state.
        return None


_TOO_LONG = re.compile(rb"prompt is too long: (\d+) tokens > (\d+) maximum")


def context_error(exc: UpstreamStatus) -> UpstreamStatus | ContextExceeded:
    """Anthropic's own 400 "prompt is too long: N tokens > M maximum" → ContextExceeded.

    Rendered as an UpstreamStatus it reached Anthropic clients as "upstream returned HTTP 400:
    prompt is too long...", which Claude Code does not recognise, so it never compacted; and
    OpenAI clients got ``upstream_rejected`` instead of ``context_length_exceeded``.
    """
    if exc.upstream_status != 400:
        return exc
    found = _TOO_LONG.search(exc.body, 0, 4000)
    if found is None:
        return exc
    return ContextExceeded(int(found[1]), int(found[2]))


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
    registry.register("anthropic", _factory, keeps_client_prefix=True)
