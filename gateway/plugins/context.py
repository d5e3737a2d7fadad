"""What plugins see: the gateway at start-up, one request per request hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from gateway.identity import Identity
from gateway.wire import Usage

if TYPE_CHECKING:
    from adapters.base import UpstreamReply
    from gateway.config.schema import Config
    from gateway.config.upstreams import Model
    from gateway.forwarder import OpenStream, Trace
    from gateway.metrics import Metrics
    from gateway.router import ModelTable
    from gateway.wire import ClientRequest

_decode_messages = msgspec.json.Decoder(list[dict[str, Any]])
_encode = msgspec.json.Encoder().encode


class Forwarding(Protocol):
    """What answers a request: the gateway's Forwarder, or a plugin's stand-in for it."""

    async def send(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> UpstreamReply: ...

    async def open_stream(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> OpenStream:
        """The caller must ``aclose()`` the stream; that gives back what it holds."""
        ...


class Setup(Protocol):
    """What the gateway is built from, before anything opens: what ``register_routes`` sees.

    A protocol, not the state class: plugins depend on these few parts only, and the core,
    which loads plugins, is never imported back by them.
    """

    @property
    def config(self) -> Config: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def models(self) -> ModelTable: ...


class Gateway(Setup, Protocol):
    """What plugins may use of the running gateway (its state, seen from this side of the hooks)."""

    @property
    def forwarder(self) -> Forwarding: ...


@dataclass
class RoutesContext:
    """Handed to ``register_routes``, when the app is built and before the gateway starts."""

    state: Setup
    # The plugin's own section of routing.yaml (``plugins.settings.<name>``).
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginContext:
    """Handed to the start-up hooks (``register_*``, ``startup``) and ``shutdown``."""

    state: Gateway
    # The plugin's own section of routing.yaml (``plugins.settings.<name>``).
    settings: dict[str, Any] = field(default_factory=dict)
    # Runs one registration hook over every plugin (``collect("register_tools", tools=t)``):
    # how a plugin that owns a registry lets the others fill it.
    collect: Callable[..., None] = field(default=lambda hook, **kwargs: None)


@dataclass(slots=True)
class RequestContext:
    """One chat request on its way to an upstream. ``fields`` is the body one level deep.

    Always OpenAI chat, whatever protocol the client spoke (Anthropic and Responses requests
    arrive translated), so a plugin handles every client the same way.
    """

    request_id: str
    identity: Identity
    # The logical model the request resolved to (its name, not the alias the client sent).
    model: str
    # The client protocol's route label: chat, messages, responses, llm_proxy.
    route: str
    fields: dict[str, msgspec.Raw]
    stream: bool
    state: Gateway
    # Set by a plugin in before_upstream when it needs the answer's text in after_response
    # (costs a decode per streamed chunk, so only then).
    capture_reply: bool = False
    # The conversation's session, from the X-Session-Id header (plugins may also read
    # metadata.session_id): it outlives model switches.
    session_id: str | None = None
    # Free-form notes plugins leave for each other and for after_response.
    notes: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[dict[str, Any]]:
        raw = self.fields.get("messages")
        return _decode_messages.decode(raw) if raw is not None else []

    def set_messages(self, messages: list[dict[str, Any]]) -> None:
        self.fields["messages"] = msgspec.Raw(_encode(messages))

    def last_user_text(self) -> str:
        for message in reversed(self.messages()):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return ""


@dataclass(slots=True)
class Exchanged:
    """What was answered, for after_response."""

    # The status the client got; 499 when it left early (``reply_text`` is then what it saw).
    status: int
    # The assistant's text when a plugin set ``capture_reply``, else None.
    reply_text: str | None
    usage: Usage | None
