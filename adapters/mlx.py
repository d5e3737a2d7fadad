"""Apple MLX ``mlx_lm.server``: OpenAI-compatible with streaming quirks.

- Every chunk repeats ``delta.role: "assistant"``; OpenAI sends the role once, in the first chunk.
- The usage chunk says ``object: "chat.completion"`` instead of ``chat.completion.chunk``.
- It opens streams with ``: keepalive`` comments (dropped by the SSE framer like any comment).
- Errors are ``{"error": "<string>"}``; the error tree already reads that shape.
Fixing these needs a decode/encode per event, so MLX streams pay for it and others do not.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from adapters.base import AdapterRegistry, Operation, Probe
from adapters.http import decode_json_object
from adapters.openai_compat import EventFix, OpenAICompatAdapter
from gateway.config.upstreams import Provider

_encode = msgspec.json.Encoder().encode
_DATA = b"data: "


class MLXAdapter(OpenAICompatAdapter):
    # It reads reasoning_content on assistant messages (its chat templates decide what to keep).
    takes_reasoning_history = True

    def __init__(self, name: str, provider: Provider, session: aiohttp.ClientSession) -> None:
        super().__init__(name, provider, session)
        parts = urlsplit(provider.base_url)
        self._health_url = urlunsplit((parts.scheme, parts.netloc, "/health", "", ""))

    def event_fix(self, op: Operation) -> EventFix | None:
        return _RoleOnce().fix

    async def probe(self) -> Probe:
        return await self._probe_url(self._health_url)


class _RoleOnce:
    """Per-stream state: keep ``delta.role`` in the first chunk only, fix the usage chunk's object."""

    __slots__ = ("_role_sent",)

    def __init__(self) -> None:
        self._role_sent = False

    def fix(self, event: bytes) -> bytes | None:
        if not event.startswith(_DATA) or event == b"data: [DONE]":
            return event
        chunk = decode_json_object(event[len(_DATA) :])
        if chunk is None:
            return event
        if chunk.get("object") == "chat.completion":
            chunk["object"] = "chat.completion.chunk"
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and "role" in delta:
                if self._role_sent:
                    del delta["role"]
                self._role_sent = True
        return _DATA + _encode(chunk)


def _factory(name: str, provider: Provider, session: aiohttp.ClientSession) -> MLXAdapter:
    return MLXAdapter(name, provider, session)


def register(registry: AdapterRegistry) -> None:
    registry.register("mlx", _factory)
