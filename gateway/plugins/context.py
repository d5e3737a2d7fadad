"""What plugins see: the gateway at start-up, one request per request hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.identity import Identity
from gateway.wire import Usage

if TYPE_CHECKING:
    from gateway.state import GatewayState

_decode_messages = msgspec.json.Decoder(list[dict[str, Any]])
_encode = msgspec.json.Encoder().encode


@dataclass
class PluginContext:
    """Handed to ``register_*``, ``startup`` and ``shutdown``."""

    state: GatewayState
    # The plugin's own section of routing.yaml (``plugins.settings.<name>``).
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestContext:
    """One chat request on its way to an upstream. ``fields`` is the body one level deep."""

    request_id: str
    identity: Identity
    model: str
    route: str
    fields: dict[str, msgspec.Raw]
    stream: bool
    # Set by a plugin in before_upstream when it needs the answer's text in after_response
    # (costs a decode per streamed chunk, so only then).
    capture_reply: bool = False
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


@dataclass
class Exchanged:
    """What was answered, for after_response."""

    status: int
    reply_text: str | None
    usage: Usage | None
