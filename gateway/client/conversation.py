"""One chat conversation held in memory: the model, the system prompt and the turns so far."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.client.api import ChatReply, GatewayClient


@dataclass
class Reply:
    text: str
    model: str | None
    usage: dict[str, Any] | None
    finish_reason: str | None
    latency_ms: float

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "content": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "latency_ms": round(self.latency_ms, 1),
        }


@dataclass
class Conversation:
    client: GatewayClient
    model: str
    system: str | None = None
    stream: bool = True
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def ask(self, text: str, on_delta: Callable[[str], None] | None = None) -> Reply:
        """Send ``text`` as the next user turn; ``on_delta`` sees the reply as it streams.

        The turn is kept only if the reply arrives whole: an error or Ctrl-C (KeyboardInterrupt,
        which also hangs up the stream so the gateway cancels it) leaves the conversation as it
        was before the question.
        """
        self.turns.append({"role": "user", "content": text})
        started = time.monotonic()
        try:
            reply = self._streamed(on_delta) if self.stream else self._whole()
        except BaseException:
            self.turns.pop()
            raise
        answer = Reply(
            reply.text,
            reply.model,
            reply.usage,
            reply.finish_reason,
            (time.monotonic() - started) * 1000,
        )
        self.turns.append({"role": "assistant", "content": reply.text})
        return answer

    def clear(self) -> None:
        self.turns.clear()

    def _whole(self) -> ChatReply:
        return self.client.chat({"model": self.model, "messages": self.messages()})

    def _streamed(self, on_delta: Callable[[str], None] | None) -> ChatReply:
        with self.client.stream_chat({"model": self.model, "messages": self.messages()}) as stream:
            for delta in stream:
                if on_delta is not None:
                    on_delta(delta)
        return ChatReply(stream.text, stream.model, stream.usage, stream.finish_reason)
