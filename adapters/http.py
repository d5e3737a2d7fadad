"""The HTTP pieces every adapter shares: error mapping, timeouts, headers, probes, SSE opening.

One boundary per concern (STYLE.md §5): aiohttp's exceptions become the gateway's error tree in
``mapped_client_errors`` alone, and an upstream's ``Retry-After`` is read in ``retry_after``
alone, whichever adapter made the call.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import msgspec

from adapters.base import Probe
from adapters.connections import connection_reused
from adapters.h1 import H1Pool, H1Response
from adapters.streams import Expiry, refuse_unknown_encoding
from gateway.config.upstreams import Provider, Timeouts
from gateway.errors import (
    StaleConnection,
    UpstreamBodyTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHungUp,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
)


@contextmanager
def mapped_client_errors() -> Iterator[None]:
    """Translate aiohttp's exceptions into the gateway's error tree, once, at this boundary."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise upstream_error(exc) from None


def upstream_error(exc: TimeoutError | aiohttp.ClientError) -> UpstreamError:
    """The gateway's error for one of aiohttp's: the mapping behind ``mapped_client_errors``,
    callable from a plain ``except`` where a context manager per read costs too much."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("upstream timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return UpstreamConnectError(f"cannot connect to {exc.host}:{exc.port}: {reason}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        if connection_reused():
            return StaleConnection("upstream closed a kept-alive connection")
        # aiohttp raises this one only before the response head: a body cut off is a payload error.
        return UpstreamHungUp("upstream closed the connection before answering")
    if isinstance(exc, aiohttp.ClientPayloadError):
        if _DECODE_FAILURE in str(exc):
            return UpstreamProtocolError(f"upstream body could not be decoded: {exc}")
        return UpstreamProtocolError("upstream response was cut off")
    if isinstance(exc, aiohttp.ClientOSError):
        # ECONNRESET or EPIPE writing onto a pooled connection the server just closed.
        if connection_reused():
            return StaleConnection(f"kept-alive connection failed: {exc}")
        return UpstreamConnectError(f"{exc.__class__.__name__}: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError) and _DECODE_FAILURE in exc.message:
        # A Content-Encoding aiohttp cannot decode (br or zstd without their libraries) is
        # refused while it parses the head: an unusable answer, not a connection failure.
        return UpstreamProtocolError(f"upstream answer cannot be decoded: {exc.message}")
    return UpstreamConnectError(f"{exc.__class__.__name__}: {exc}")


# aiohttp's wording for a body in a coding it cannot decode (br, zstd) or that is corrupt.
_DECODE_FAILURE = "Can not decode content-encoding"


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """A whole non-stream answer, at most ``limit`` bytes after decoding.

    ``response.read()`` would buffer any size (an upstream's 5 GB answer or a zip bomb);
    this reads the same chunks it would, counting them.
    """
    refuse_unknown_encoding(response)
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.readany():
        size += len(chunk)
        if size > limit:
            response.close()
            raise UpstreamProtocolError(
                f"upstream answer exceeds {limit} bytes (timeouts.max_body_bytes)"
            )
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def whole_answer_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    """Non-streaming calls: one deadline for connect, headers and the whole body.

    aiohttp's ``total`` runs from the request to the last body byte, so a body dripping a byte
    at a time cannot outlive it the way it outlives a per-read ``sock_read``; and it costs no
    await of its own on the success path.
    """
    return aiohttp.ClientTimeout(total=t.connect + t.first_byte, sock_connect=t.connect)


def stream_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    """Streaming calls: only the connect is bounded here; ``StreamDeadlines`` bound the body."""
    return aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=None)


def probe_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    """A health probe never holds the probe loop for long, whatever the provider's timeouts."""
    return aiohttp.ClientTimeout(total=min(2.0, t.connect + 1))


def bearer_headers(provider: Provider) -> dict[str, str]:
    """JSON headers with the provider's own, and its key as a bearer token when it has one."""
    headers = {"Content-Type": "application/json", **provider.headers}
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    return headers


def retry_after(response: aiohttp.ClientResponse | H1Response) -> float | None:
    """The upstream's ``Retry-After`` in seconds (the forwarder's backoff honours it)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def unprobed(provider: Provider) -> Probe | None:
    """The probe's answer when no request should be made: a missing key, or a cloud API."""
    if provider.missing_env:
        return Probe(False, f"environment variable {', '.join(provider.missing_env)} not set")
    if not provider.is_local:
        # Probing a cloud API costs the user a request; a configured key is the best we know.
        return Probe(True, "cloud provider with API key configured")
    return None


async def probe_url(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], timeouts: Timeouts
) -> Probe:
    """Ready when ``url`` answers 200; an HTTP or connection error says why not."""
    try:
        with mapped_client_errors():
            async with session.get(
                url, headers=headers, timeout=probe_timeout(timeouts)
            ) as response:
                await response.read()
                if response.status == 200:
                    return Probe(True, "ready")
                return Probe(False, f"{url} answered HTTP {response.status}")
    except UpstreamError as exc:
        return Probe(False, exc.message)


async def post_for_body(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's per-request timeout)
    limit: int,
) -> tuple[int, bytes]:
    """POST and read the whole answer (at most ``limit`` bytes); an error status raises
    ``UpstreamStatus`` with its body and ``Retry-After``.

    ``timeout.total`` is enforced here (``Expiry``), not by aiohttp: its ``total`` enters a
    TimerContext around every wait for data and registers callbacks on the connection, 9,500
    instructions per request more on the event loop (callgrind, bench.revisions json; this
    costs about 2,800).
    """
    expiry = None
    if timeout.total is not None:
        loop = asyncio.get_running_loop()
        expiry = Expiry(loop, loop.time() + timeout.total)
        timeout = _without_total(timeout)
    try:
        # A plain try, not mapped_client_errors(): the same mapping without a generator and
        # context manager per call, 8,000 instructions fewer per request (callgrind; a try is
        # free in Python 3.11+ when nothing is raised).
        async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
            data = await read_body(response, limit)
            if response.status >= 400:
                raise UpstreamStatus(response.status, data, retry_after=retry_after(response))
    except asyncio.CancelledError:
        if expiry is not None and expiry.expired():
            raise UpstreamTimeout("upstream timed out") from None
        raise
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise upstream_error(exc) from None
    finally:
        if expiry is not None:
            expiry.disarm()
    return response.status, data


@functools.lru_cache(maxsize=64)
def _without_total(timeout: aiohttp.ClientTimeout) -> aiohttp.ClientTimeout:
    """``timeout`` for aiohttp once ``post_for_body`` bounds the whole call itself (one per
    adapter: built once, not per request)."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=timeout.connect,
        sock_read=timeout.sock_read,
        sock_connect=timeout.sock_connect,
        ceil_threshold=timeout.ceil_threshold,
    )


async def open_event_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    client_timeout: aiohttp.ClientTimeout,
    timeouts: Timeouts,
    content_type: str | None = "text/event-stream",
) -> aiohttp.ClientResponse:
    """POST for a streamed answer; return once the upstream accepted it.

    Errors raise before any byte reaches the client, so the forwarder can still fall back:
    an error status with its body, or a 200 that is not a stream at all (``content_type``
    None skips that check, for upstreams whose streams have no dependable type).
    """
    # An Expiry and a plain try on the way in (see post_for_body): 23,000 instructions per
    # stream fewer than asyncio.timeout inside mapped_client_errors() (callgrind).
    loop = asyncio.get_running_loop()
    expiry = Expiry(loop, loop.time() + timeouts.connect + timeouts.first_byte)
    try:
        response = await session.post(url, data=body, headers=headers, timeout=client_timeout)
    except asyncio.CancelledError:
        if expiry.expired():
            raise UpstreamTimeout("upstream timed out") from None
        raise
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise upstream_error(exc) from None
    finally:
        expiry.disarm()
    if response.status >= 400:
        with mapped_client_errors():
            try:
                async with asyncio.timeout(timeouts.idle):
                    data = await response.read()
            finally:
                response.release()
        raise UpstreamStatus(response.status, data, retry_after=retry_after(response))
    if content_type is None:
        return response
    got = response.headers.get("Content-Type", "")
    if not got.startswith(content_type):
        response.close()
        raise UpstreamProtocolError(f"asked for a stream but got Content-Type {got or '(none)'}")
    return response


def decode_json_object(data: bytes) -> dict[str, Any] | None:
    """Decode a JSON object, or None when the bytes are not one (quirk fixers must not raise)."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


# --- the same two calls over the lean client (adapters/h1.py), for plain-HTTP upstreams ---------


async def lean_post_for_body(
    pool: H1Pool, head: bytes, body: bytes, timeouts: Timeouts
) -> tuple[int, bytes]:
    """``post_for_body`` over ``pool``: one deadline for connect, head and the whole body."""
    loop = asyncio.get_running_loop()
    expiry = Expiry(loop, loop.time() + timeouts.connect + timeouts.first_byte)
    try:
        response = await pool.post(head, body, timeouts.max_body_bytes)
        # Which half was late decides a peer's failure class (gateway/peers/policy.py); a try
        # costs nothing until something raises.
        try:
            data = await response.read()
        except asyncio.CancelledError:
            if expiry.expired():
                raise UpstreamBodyTimeout(
                    "upstream sent its head but not its body in time"
                ) from None
            raise
    except asyncio.CancelledError:
        if expiry.expired():
            raise UpstreamTimeout("upstream timed out") from None
        raise
    finally:
        expiry.disarm()
    if response.status >= 400:
        raise UpstreamStatus(response.status, data, retry_after=retry_after(response))
    return response.status, data


async def lean_open_event_stream(
    pool: H1Pool,
    head: bytes,
    body: bytes,
    timeouts: Timeouts,
    content_type: str | None = "text/event-stream",
) -> H1Response:
    """``open_event_stream`` over ``pool``: errors raise before any byte reaches the client."""
    loop = asyncio.get_running_loop()
    expiry = Expiry(loop, loop.time() + timeouts.connect + timeouts.first_byte)
    try:
        response = await pool.post(head, body, timeouts.max_body_bytes)
    except asyncio.CancelledError:
        if expiry.expired():
            raise UpstreamTimeout("upstream timed out") from None
        raise
    finally:
        expiry.disarm()
    if response.status >= 400:
        try:
            async with asyncio.timeout(timeouts.idle):
                data = await response.read()
        except TimeoutError:
            raise UpstreamTimeout("upstream timed out") from None
        raise UpstreamStatus(response.status, data, retry_after=retry_after(response))
    if content_type is None:
        return response
    got = response.headers.get("Content-Type", "") or ""
    if not got.startswith(content_type):
        response.close()
        raise UpstreamProtocolError(f"asked for a stream but got Content-Type {got or '(none)'}")
    return response
