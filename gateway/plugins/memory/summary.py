"""``/summarize``: a chat model condenses a scope's recent items into one ``summary`` item."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from adapters.base import Operation
from gateway.errors import ModelNotFound, UpstreamProtocolError
from gateway.forwarder import Trace
from gateway.plugins.capture import reply_text
from gateway.plugins.memory.items import MemoryItem
from gateway.wire import ClientRequest

if TYPE_CHECKING:
    from gateway.plugins.context import Gateway

INSTRUCTIONS = (
    "You maintain an AI agent's memory. Summarise the memory items below (oldest first) in a "
    "few short paragraphs or bullet points. Keep facts, decisions, names, numbers and open "
    "tasks; drop small talk. Write the summary only, with no preamble."
)
_encode = msgspec.json.Encoder().encode


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def summary_messages(items: Sequence[MemoryItem]) -> list[dict[str, Any]]:
    """The chat request that summarises ``items`` (given newest first, as listings are)."""
    lines = [
        f"[{timestamp(item.created_at)}] ({item.kind}) {item.content}" for item in reversed(items)
    ]
    return [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "\n".join(lines)},
    ]


class GatewayChat:
    """A whole (non-streamed) chat completion through the gateway's own routing."""

    def __init__(self, state: Gateway) -> None:
        self._state = state

    async def __call__(
        self, model_name: str, messages: list[dict[str, Any]], max_tokens: int
    ) -> str:
        state = self._state
        model = state.models.resolve(model_name)
        if model is None:
            available = ", ".join(state.models.names()) or "(none)"
            raise ModelNotFound(
                f"summary model {model_name!r} not found; available models: {available}",
                param="model",
            )
        fields = {
            "model": msgspec.Raw(_encode(model.name)),
            "messages": msgspec.Raw(_encode(messages)),
            "max_tokens": msgspec.Raw(_encode(max_tokens)),
        }
        request = ClientRequest(Operation.CHAT, model.name, False, False, fields)
        reply = await state.forwarder.send(model, request, "memory-" + os.urandom(8).hex(), Trace())
        text = reply_text(reply.body)
        if not text:
            raise UpstreamProtocolError(f"model {model.name!r} answered without text")
        return text.strip()
