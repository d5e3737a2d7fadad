"""The contract every upstream adapter implements, and the registry that finds them by kind.

An adapter turns one gateway request into one upstream call and hands back answers in
OpenAI's canonical wire form: a JSON body for non-streaming calls, complete SSE events
(``data: {...}\\n\\n``) for streaming ones. Upstream quirks never leave the adapter.
The one exception is explicit: an adapter that speaks a client protocol natively
(``SpeaksNative``) is handed the client's original body as ``UpstreamRequest.native`` and
answers in that protocol, saying so in ``UpstreamReply.protocol``.

This module knows no implementation: ``adapters/builtin.py`` lists the built-in kinds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import aiohttp
import msgspec

from gateway.config.upstreams import Provider
from gateway.contract import Native, Operation, WireProtocol

__all__ = [
    "Adapter",
    "AdapterFactory",
    "AdapterRegistry",
    "ContextReporter",
    "Native",
    "Operation",
    "Probe",
    "SpeaksNative",
    "TokenCounter",
    "UpstreamReply",
    "UpstreamRequest",
    "UpstreamStream",
    "WireProtocol",
    "native_for",
]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What the gateway asks an adapter to send.

    ``fields`` is the client's JSON body decoded one level deep: values stay raw JSON so
    everything the gateway does not understand reaches the upstream byte for byte.
    ``native`` is the client's original body, given only to an adapter that speaks its
    protocol (``SpeaksNative``) and only while no plugin edited ``fields``; the adapter then
    sends it instead of ``fields`` and answers in ``native.protocol``.
    """

    op: Operation
    fields: dict[str, msgspec.Raw]
    model: str
    stream: bool
    request_id: str
    native: Native | None = None
    # The gateway translates the answer for a client of another protocol (Anthropic Messages,
    # Responses): the adapter may ask its upstream for extras an OpenAI chat client would not
    # expect (llama.cpp's prompt_progress chunks).
    translated: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A complete non-streaming answer, in OpenAI's shape unless ``protocol`` says otherwise."""

    status: int
    body: bytes
    content_type: str = "application/json"
    protocol: WireProtocol = WireProtocol.OPENAI


class UpstreamStream(Protocol):
    """An open streaming answer: iterate for complete SSE events; always ``aclose``.

    The events are OpenAI chunks, or ``native.protocol``'s own events when the request carried
    a native body: the rule itself is the declaration (``gateway.forwarder.OpenStream.protocol``
    records it), so stream classes written for plain OpenAI, a plugin's included, need nothing.
    """

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


@runtime_checkable
class ReadsAhead(Protocol):
    """A stream whose reads can bring several events: the relay takes the rest of a read at
    once and writes it to the client in one piece (one send, not one per event)."""

    def drain(self) -> list[bytes]:
        """The events already read and not yet returned, consumed (empty: none)."""
        ...


@runtime_checkable
class SpeaksNative(Protocol):
    """Speaks client protocols besides OpenAI's: requests in them arrive with ``native`` set."""

    native_protocols: frozenset[WireProtocol]


def native_for(adapter: Adapter, native: Native | None) -> Native | None:
    """``native`` when ``adapter`` speaks its protocol, else None (the adapter gets ``fields``).

    Records on ``native`` which provider took it (``Native.taker``): a stored Response
    remembers who answered it natively, to continue there by the upstream's own id.
    """
    if native is None:
        return None
    taken = (
        isinstance(adapter, SpeaksNative)
        and native.protocol in adapter.native_protocols
        and native.only in (None, adapter.name)
    )
    native.taker = adapter.name if taken else None
    return native if taken else None


AdapterFactory = Callable[[str, Provider, aiohttp.ClientSession], Adapter]


class AdapterRegistry:
    """Adapter kinds by name. Built-in adapters register here exactly as plugins would."""

    def __init__(self) -> None:
        self._factories: dict[str, AdapterFactory] = {}
        self._keep_prefix: set[str] = set()
        self._responses: set[str] = set()

    def register(
        self,
        kind: str,
        factory: AdapterFactory,
        *,
        keeps_client_prefix: bool = False,
        speaks_responses: bool = False,
    ) -> None:
        """``keeps_client_prefix``: the kind's API reads what clients put at the very start of
        a prompt (Anthropic's reads Claude Code's billing line), so it always gets the prompt
        as sent and ``strip_volatile_prefix`` does not apply (gateway/translate/prefix.py).
        ``speaks_responses``: a provider of the kind may set ``responses_api: true``."""
        if kind in self._factories:
            raise ValueError(f"adapter kind {kind!r} is already registered")
        self._factories[kind] = factory
        if keeps_client_prefix:
            self._keep_prefix.add(kind)
        if speaks_responses:
            self._responses.add(kind)

    def keeps_client_prefix(self, kind: str) -> bool:
        return kind in self._keep_prefix

    def problems(self, providers: Mapping[str, Provider]) -> list[str]:
        """What is wrong with ``providers`` that only the kinds registered know, by key path."""
        problems = []
        for name, provider in providers.items():
            if provider.kind not in self._factories:
                problems.append(
                    f"providers.{name}.kind: unknown adapter kind {provider.kind!r} "
                    f"(known: {', '.join(self.kinds())})"
                )
            elif provider.strip_volatile_prefix and provider.kind in self._keep_prefix:
                problems.append(
                    f"providers.{name}.strip_volatile_prefix: kind {provider.kind} always gets "
                    "the client's prompt as sent (its API reads the billing line); remove the key"
                )
            elif provider.responses_api and provider.kind not in self._responses:
                problems.append(
                    f"providers.{name}.responses_api: kind {provider.kind} does not speak "
                    f"OpenAI's Responses API (kinds that do: {', '.join(sorted(self._responses))})"
                )
        return problems

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
