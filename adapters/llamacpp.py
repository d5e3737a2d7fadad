"""llama.cpp ``llama-server``: OpenAI-compatible, with two differences worth hiding.

- A tool-call reply carries ``content: ""`` where OpenAI (and MLX) send ``null``; clients that
  test ``content is None`` to detect tool calls would misread it.
- Health lives at the server root (``/health``: 503 while loading, 200 when ready), not under ``/v1``.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from adapters.base import AdapterRegistry, Operation, Probe
from adapters.openai_compat import OpenAICompatAdapter, decode_json_object
from gateway.config import Provider

_encode = msgspec.json.Encoder().encode


class LlamaCppAdapter(OpenAICompatAdapter):
    def __init__(self, name: str, provider: Provider, session: aiohttp.ClientSession) -> None:
        super().__init__(name, provider, session)
        parts = urlsplit(provider.base_url)
        self._health_url = urlunsplit((parts.scheme, parts.netloc, "/health", "", ""))

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


def _factory(name: str, provider: Provider, session: aiohttp.ClientSession) -> LlamaCppAdapter:
    return LlamaCppAdapter(name, provider, session)


def register(registry: AdapterRegistry) -> None:
    registry.register("llamacpp", _factory)
