"""OpenAI-compatible upstreams: OpenAI, DeepSeek, vLLM, LM Studio, and the base for llama.cpp and MLX.

The hot path forwards bytes: the client's body is rewritten one level deep (model name,
``stream_options``), and upstream SSE events are passed through unchanged unless a subclass
says a quirk needs fixing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import msgspec

from adapters.base import AdapterRegistry, Operation, Probe, UpstreamReply, UpstreamRequest
from adapters.connections import connection_reused
from adapters.streams import Framer, StreamDeadlines, refuse_unknown_encoding
from gateway.config import Provider, Timeouts
from gateway.errors import (
    StaleConnection,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
)

_encode = msgspec.json.Encoder().encode
_INCLUDE_USAGE = msgspec.Raw(b'{"include_usage":true}')

# Rewrites one canonical SSE event (without its trailing blank line); None drops it.
EventFix = Callable[[bytes], bytes | None]


@contextmanager
def mapped_client_errors() -> Iterator[None]:
    """Translate aiohttp's exceptions into the gateway's error tree, once, at this boundary."""
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeout("upstream timed out") from None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or str(exc.os_error)
        raise UpstreamConnectError(f"cannot connect to {exc.host}:{exc.port}: {reason}") from None
    except aiohttp.ServerDisconnectedError:
        if connection_reused():
            raise StaleConnection("upstream closed a kept-alive connection") from None
        raise UpstreamProtocolError("upstream closed the connection") from None
    except aiohttp.ClientPayloadError:
        raise UpstreamProtocolError("upstream response was cut off") from None
    except aiohttp.ClientOSError as exc:
        # ECONNRESET or EPIPE writing onto a pooled connection the server just closed.
        if connection_reused():
            raise StaleConnection(f"kept-alive connection failed: {exc}") from None
        raise UpstreamConnectError(f"{exc.__class__.__name__}: {exc}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamConnectError(f"{exc.__class__.__name__}: {exc}") from None


def whole_answer_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    """Non-streaming calls: one deadline for connect, headers and the whole body.

    aiohttp's ``total`` runs from the request to the last body byte, so a body dripping a byte
    at a time cannot outlive it the way it outlives a per-read ``sock_read``; and it costs no
    await of its own on the success path.
    """
    return aiohttp.ClientTimeout(total=t.connect + t.first_byte, sock_connect=t.connect)


class SSEStream:
    """Frames an upstream SSE body into complete events and applies the adapter's fixes.

    A plain async iterator rather than an async generator: the relay may be cancelled while
    it waits for the next event (a client disconnect), and closing a generator suspended in
    an await is exactly what Python refuses ("asynchronous generator is already running").
    Deadlines (``StreamDeadlines``) count content only: the first data event within
    ``first_byte`` of ``started`` (prompt processing on a local engine can be slow), each next
    one within ``idle``, the whole stream within ``max_stream``. Comments and pings never
    reset them; they are dropped (the gateway sends its own keep-alives), pings only before
    the first content, so the forwarder's "first event" is always a real one.
    """

    __slots__ = ("_cr", "_deadlines", "_done", "_events", "_fix", "_framer", "_index", "_response")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        fix: EventFix | None,
        timeouts: Timeouts,
        started: float,
    ) -> None:
        refuse_unknown_encoding(response)
        self._response = response
        self._fix = fix
        self._deadlines = StreamDeadlines(timeouts, started, asyncio.get_running_loop().time)
        self._framer = Framer(b"\n\n", timeouts.max_event_bytes, "event")
        self._cr = False  # a chunk ended in "\r": its "\n" may start the next one
        self._events: list[bytes] = []
        self._index = 0
        self._done = False

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> bytes:
        while self._index >= len(self._events):
            if self._done:
                raise StopAsyncIteration
            await self._read()
        event = self._events[self._index]
        self._index += 1
        return event

    async def _read(self) -> None:
        deadlines = self._deadlines
        with mapped_client_errors():
            try:
                async with asyncio.timeout_at(deadlines.next()):
                    chunk = await self._response.content.readany()
            except TimeoutError:
                raise deadlines.expired() from None
        if not chunk:
            self._done = True
            return
        if b"\r" in chunk or self._cr:
            chunk = self._normalised(chunk)
        fix = self._fix
        ready: list[bytes] = []
        content = False
        for event in self._framer.feed(chunk):
            if not event:
                continue
            if event[0] == 0x3A:  # starts with a comment (MLX's keep-alives are whole events)
                event = _without_comments(event)
                if not event:
                    continue
            # Content is any event but an Anthropic ping (first byte b"e": cheap for "data:").
            if content or event[0] != 0x65 or not event.startswith(b"event: ping"):
                content = True
            elif not deadlines.seen:
                continue
            if fix is not None:
                fixed = fix(event)
                if fixed is None:
                    continue
                event = fixed
            ready.append(event + b"\n\n")
        if content:
            deadlines.content()
        self._events = ready
        self._index = 0

    def _normalised(self, chunk: bytes) -> bytes:
        """CRLF line ends as LF, including a pair split between two reads."""
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr = True
        return chunk.replace(b"\r\n", b"\n")

    async def aclose(self) -> None:
        # release() would drain the rest of a possibly endless body; close() drops the connection.
        if not self._response.closed:
            self._response.close()


def _without_comments(event: bytes) -> bytes:
    return b"\n".join(line for line in event.split(b"\n") if not line.startswith(b":"))


class OpenAICompatAdapter:
    """Speaks OpenAI's ``/v1`` wire format to any server that implements it."""

    def __init__(self, name: str, provider: Provider, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.provider = provider
        self._session = session
        base = provider.base_url.rstrip("/")
        self._urls = {op: f"{base}/{op.value}" for op in Operation}
        self._models_url = f"{base}/models"
        headers = {"Content-Type": "application/json", **provider.headers}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        self._headers = headers
        t = provider.timeouts
        self._send_timeout = whole_answer_timeout(t)
        # Streams are bounded by SSEStream's deadlines instead.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=t.connect, sock_read=None
        )

    # --- hooks for subclasses with quirks -----------------------------------------------------

    def fix_reply(self, op: Operation, body: bytes) -> bytes:
        """Normalise a non-streaming 200 body to OpenAI's shape."""
        return body

    def event_fix(self, op: Operation) -> EventFix | None:
        """A per-event normaliser for streams, or None to relay events untouched (the fast path)."""
        return None

    # --- the protocol -------------------------------------------------------------------------

    # OpenAI's own API deprecated max_tokens for chat, and its reasoning models refuse it;
    # most other OpenAI-compatible servers know only max_tokens. Set per kind at registration.
    modern_max_tokens = False

    def encode_body(self, request: UpstreamRequest) -> bytes:
        fields = dict(request.fields)
        fields["model"] = msgspec.Raw(_encode(request.model))
        if self.modern_max_tokens and request.op is Operation.CHAT and "max_tokens" in fields:
            limit = fields.pop("max_tokens")
            fields.setdefault("max_completion_tokens", limit)
        if request.stream:
            # Always ask for usage so no token goes uncounted; the gateway drops the usage
            # chunk again for clients that did not ask for it.
            fields["stream_options"] = _with_usage(fields.get("stream_options"))
        return _encode(fields)

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        body = self.encode_body(request)
        with mapped_client_errors():
            async with self._session.post(
                self._urls[request.op], data=body, headers=self._headers, timeout=self._send_timeout
            ) as response:
                data = await response.read()
                if response.status >= 400:
                    raise UpstreamStatus(response.status, data, retry_after=_retry_after(response))
        return UpstreamReply(response.status, self.fix_reply(request.op, data))

    async def open_stream(self, request: UpstreamRequest) -> SSEStream:
        t = self.provider.timeouts
        started = asyncio.get_running_loop().time()
        response = await open_event_stream(
            self._session,
            self._urls[request.op],
            self.encode_body(request),
            self._headers,
            self._stream_timeout,
            t,
        )
        return SSEStream(response, self.event_fix(request.op), t, started)

    async def probe(self) -> Probe:
        if self.provider.missing_env:
            return Probe(
                False, f"environment variable {', '.join(self.provider.missing_env)} not set"
            )
        if not self.provider.is_local:
            # Probing a cloud API costs the user a request; a configured key is the best we know.
            return Probe(True, "cloud provider with API key configured")
        return await self._probe_url(self._models_url)

    async def _probe_url(self, url: str) -> Probe:
        timeout = aiohttp.ClientTimeout(total=min(2.0, self.provider.timeouts.connect + 1))
        try:
            with mapped_client_errors():
                async with self._session.get(
                    url, headers=self._headers, timeout=timeout
                ) as response:
                    await response.read()
                    if response.status == 200:
                        return Probe(True, "ready")
                    return Probe(False, f"{url} answered HTTP {response.status}")
        except UpstreamError as exc:
            return Probe(False, exc.message)

    async def close(self) -> None:
        # The session is shared and owned by the app state.
        return None


async def open_event_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    client_timeout: aiohttp.ClientTimeout,
    timeouts: Timeouts,
) -> aiohttp.ClientResponse:
    """POST for an SSE answer; return once the upstream accepted it with an event stream.

    Errors raise before any byte reaches the client, so the forwarder can still fall back:
    an error status with its body, or a 200 that is not a stream at all.
    """
    with mapped_client_errors():
        async with asyncio.timeout(timeouts.connect + timeouts.first_byte):
            response = await session.post(url, data=body, headers=headers, timeout=client_timeout)
        if response.status >= 400:
            try:
                async with asyncio.timeout(timeouts.idle):
                    data = await response.read()
            finally:
                response.release()
            raise UpstreamStatus(response.status, data, retry_after=_retry_after(response))
    content_type = response.headers.get("Content-Type", "")
    if not content_type.startswith("text/event-stream"):
        response.close()
        raise UpstreamProtocolError(
            f"asked for a stream but got Content-Type {content_type or '(none)'}"
        )
    return response


def _with_usage(client_value: msgspec.Raw | None) -> msgspec.Raw:
    if client_value is None:
        return _INCLUDE_USAGE
    try:
        options = msgspec.json.decode(client_value)
    except msgspec.DecodeError:
        return _INCLUDE_USAGE
    if not isinstance(options, dict):
        return _INCLUDE_USAGE
    options["include_usage"] = True
    return msgspec.Raw(_encode(options))


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def decode_json_object(data: bytes) -> dict[str, Any] | None:
    """Decode a JSON object, or None when the bytes are not one (quirk fixers must not raise)."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _factory(name: str, provider: Provider, session: aiohttp.ClientSession) -> OpenAICompatAdapter:
    return OpenAICompatAdapter(name, provider, session)


class OpenAIAdapter(OpenAICompatAdapter):
    """api.openai.com itself."""

    modern_max_tokens = True


def _openai_factory(name: str, provider: Provider, session: aiohttp.ClientSession) -> OpenAIAdapter:
    return OpenAIAdapter(name, provider, session)


def register(registry: AdapterRegistry) -> None:
    registry.register("openai", _openai_factory)
    # Servers that speak OpenAI's format without quirks we know of.
    for kind in ("openai-compatible", "deepseek", "vllm", "lmstudio"):
        registry.register(kind, _factory)
