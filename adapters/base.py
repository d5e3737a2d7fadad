"""The contract every upstream adapter implements, and the registry that finds them by kind.

An adapter turns one gateway request into one upstream call and hands back answers in
OpenAI's canonical wire form: a JSON body for non-streaming calls, complete SSE events
(``data: {...}\\n\\n``) for streaming ones. Upstream quirks never leave the adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import aiohttp
import msgspec

from gateway.config import Provider


class Operation(StrEnum):
    """The OpenAI endpoints a request can be for; the value is the path under ``/v1``."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What the gateway asks an adapter to send.

    ``fields`` is the client's JSON body decoded one level deep: values stay raw JSON so
    everything the gateway does not understand reaches the upstream byte for byte.
    """

    op: Operation
    fields: dict[str, msgspec.Raw]
    model: str
    stream: bool
    request_id: str


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A complete non-streaming answer, already in OpenAI's shape."""

    status: int
    body: bytes
    content_type: str = "application/json"


class UpstreamStream(Protocol):
    """An open streaming answer: iterate for complete, canonical SSE events; always ``aclose``."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Probe:
    available: bool
    detail: str


class Adapter(Protocol):
    """One upstream provider.

    Raises only ``gateway.errors.UpstreamError`` subclasses, and ``ContextExceeded`` when the
    upstream says the prompt is longer than its context (no other target would be asked).
    """

    name: str
    provider: Provider

    async def send(self, request: UpstreamRequest) -> UpstreamReply: ...

    async def open_stream(self, request: UpstreamRequest) -> UpstreamStream:
        """Return once the upstream accepted the call (HTTP 200); errors raise before any byte."""
        ...

    async def probe(self) -> Probe: ...

    async def close(self) -> None: ...


# --- optional capabilities ----------------------------------------------------------------------
# An adapter offers one by having the method; callers test with ``isinstance`` (the protocols are
# runtime-checkable), so no caller ever branches on a provider's kind.


@runtime_checkable
class TokenCounter(Protocol):
    """Counts a request's prompt tokens the way its upstream will (its tokenizer and template)."""

    async def count_tokens(self, request: UpstreamRequest) -> int:
        """The prompt's token count; raises ``UpstreamError`` when the upstream cannot say."""
        ...


@runtime_checkable
class ContextReporter(Protocol):
    """Knows the context window the upstream actually runs with (not what a config claims)."""

    async def context_window(self, model: str) -> int | None:
        """Tokens of context for ``model`` as loaded now; None when the upstream does not say."""
        ...


AdapterFactory = Callable[[str, Provider, aiohttp.ClientSession], Adapter]


class AdapterRegistry:
    """Adapter kinds by name. Built-in adapters register here exactly as plugins would."""

    def __init__(self) -> None:
        self._factories: dict[str, AdapterFactory] = {}

    def register(self, kind: str, factory: AdapterFactory) -> None:
        if kind in self._factories:
            raise ValueError(f"adapter kind {kind!r} is already registered")
        self._factories[kind] = factory

    def kinds(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, provider: Provider, session: aiohttp.ClientSession) -> Adapter:
        factory = self._factories.get(provider.kind)
        if factory is None:
            raise KeyError(
                f"providers.{name}.kind: unknown adapter kind {provider.kind!r} "
                f"(known: {', '.join(self.kinds())})"
            )
        return factory(name, provider, session)


def default_registry() -> AdapterRegistry:
    """A registry holding every adapter that ships with turnout."""
    from adapters import anthropic, llamacpp, mlx, ollama, openai_compat

    registry = AdapterRegistry()
    for module in (openai_compat, llamacpp, mlx, ollama, anthropic):
        module.register(registry)
    return registry
