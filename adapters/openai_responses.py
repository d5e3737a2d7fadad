"""OpenAI's Responses API as an upstream: a Responses client's request sent as it came.

A Responses request (Codex, the openai SDK's ``responses``) reaches a provider with
``responses_api`` on (gateway/config/upstreams.py) as its own body (``UpstreamRequest.native``):
POSTed to ``{base_url}/responses`` with only the model name changed, the answer relayed as the
upstream wrote it (``WireProtocol.RESPONSES``), stream or not. What translation to chat would
lose survives: OpenAI's reasoning items and their ``encrypted_content``, hosted tools, its own
response ids (a continuation on the same provider passes ``previous_response_id`` on).
"""

from __future__ import annotations

import aiohttp

from adapters.base import Native, WireProtocol
from adapters.http import open_event_stream, post_for_body
from gateway.config.upstreams import Provider
from gateway.translate import encode, raw

RESPONSES = frozenset({WireProtocol.RESPONSES})
NONE: frozenset[WireProtocol] = frozenset()


def speaks_responses(provider: Provider, default: bool) -> frozenset[WireProtocol]:
    """The native protocols of an OpenAI-compatible provider (``SpeaksNative``)."""
    on = default if provider.responses_api is None else provider.responses_api
    return RESPONSES if on else NONE


def responses_body(native: Native, model: str) -> bytes:
    fields = dict(native.fields)
    fields["model"] = raw(model)
    return encode(fields)


class ResponsesUpstream:
    """The ``/responses`` endpoint of one provider, for its adapter's native requests."""

    __slots__ = ("_headers", "_provider", "_send_timeout", "_session", "_stream_timeout", "_url")

    def __init__(
        self,
        provider: Provider,
        session: aiohttp.ClientSession,
        headers: dict[str, str],
        timeouts: tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout],
    ) -> None:
        self._provider = provider
        self._session = session
        self._url = provider.base_url.rstrip("/") + "/responses"
        self._headers = headers
        self._send_timeout, self._stream_timeout = timeouts

    async def send(self, native: Native, model: str) -> tuple[int, bytes]:
        """Status and body of a whole answer; an error status raises ``UpstreamStatus``."""
        return await post_for_body(
            self._session,
            self._url,
            responses_body(native, model),
            self._headers,
            self._send_timeout,
            self._provider.timeouts.max_body_bytes,
        )

    async def open(self, native: Native, model: str) -> aiohttp.ClientResponse:
        """The accepted event stream; an error status raises ``UpstreamStatus`` first."""
        return await open_event_stream(
            self._session,
            self._url,
            responses_body(native, model),
            self._headers,
            self._stream_timeout,
            self._provider.timeouts,
        )
