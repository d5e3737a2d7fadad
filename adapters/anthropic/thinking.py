"""Anthropic's thinking blocks through OpenAI chat, there and back, signatures untouched.

Anthropic signs each thinking block and refuses a later request whose thinking it did not sign
or whose text changed. A chat answer says the thinking as ``reasoning_content`` (what chat
clients show) and, for the way back, the signed and redacted blocks whole as
``thinking_blocks`` on the message (LiteLLM's name for it, which chat clients already round
trip). Streamed, a thinking block is whole only at its ``signature_delta``: then one chunk
carries it, text and signature together. An assistant message sent back with
``thinking_blocks`` opens its Anthropic turn with them, exactly as they came; thinking without
a signature (a local model's ``reasoning_content``) is not sent, as Anthropic would refuse it.
"""

from __future__ import annotations

import io
from typing import Any, Protocol


class _Block(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def thinking(self) -> str | None: ...
    @property
    def signature(self) -> str | None: ...
    @property
    def data(self) -> str | None: ...


def carried_block(block: _Block) -> dict[str, Any] | None:
    """A reply's block as it must come back to Anthropic; None for the blocks it need not."""
    if block.type == "thinking" and block.signature:
        return {"type": "thinking", "thinking": block.thinking or "", "signature": block.signature}
    if block.type == "redacted_thinking" and block.data:
        return {"type": "redacted_thinking", "data": block.data}
    return None


def signed_blocks(blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The blocks of a chat message that Anthropic may take back, as the client sent them."""
    return [
        b
        for b in blocks or ()
        if isinstance(b, dict)
        and (
            (b.get("type") == "thinking" and b.get("signature"))
            or (b.get("type") == "redacted_thinking" and b.get("data"))
        )
    ]


class Thinking:
    """The text of the thinking blocks of one stream so far, by block index."""

    __slots__ = ("_texts",)

    def __init__(self) -> None:
        self._texts: dict[int, io.StringIO] = {}

    def start(self, index: int, text: str | None) -> None:
        self._texts[index] = io.StringIO(text or "")
        self._texts[index].seek(0, io.SEEK_END)

    def add(self, index: int, text: str) -> None:
        buffer = self._texts.get(index)
        if buffer is None:
            buffer = self._texts[index] = io.StringIO()
        buffer.write(text)

    def signed(self, index: int, signature: str) -> dict[str, Any]:
        """The whole block, now that its signature came; its text is not needed any more."""
        buffer = self._texts.pop(index, None)
        text = buffer.getvalue() if buffer is not None else ""
        return {"type": "thinking", "thinking": text, "signature": signature}


# OpenAI's reasoning effort as a thinking budget. Anthropic's floor is 1024 tokens, and the
# budget counts within max_tokens: at most half of it, so the answer keeps room, and a request
# with too little room asks for no thinking.
_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768}
_FLOOR = 1024


def with_thinking(
    body: dict[str, Any], effort: str | None, given: dict[str, Any] | None = None
) -> None:
    """Extended thinking on a Messages body for a chat request's ``reasoning_effort`` (or the
    Anthropic ``thinking`` setting the chat body carried, used as it is).

    Anthropic refuses thinking together with a changed temperature, a top_p under 0.95 or a
    forced tool choice: the sampling settings are dropped, and a forced tool keeps thinking off.
    """
    if given is not None:
        body["thinking"] = given
        if given.get("type") == "disabled":
            return
    else:
        wanted = _BUDGETS.get(effort or "")
        choice = body.get("tool_choice")
        if wanted is None or (isinstance(choice, dict) and choice.get("type") in ("any", "tool")):
            return
        budget = min(wanted, body["max_tokens"] // 2)
        if budget < _FLOOR:
            return
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    body.pop("temperature", None)
    if body.get("top_p", 1.0) < 0.95:
        body.pop("top_p")
