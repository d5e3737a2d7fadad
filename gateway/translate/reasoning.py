"""Reasoning between protocols: what a thinking signature means, and thinking in a history.

OpenAI chat carries a model's thinking as ``reasoning_content`` (llama.cpp, DeepSeek, vLLM),
Anthropic as ``thinking`` blocks signed by Anthropic, Responses as ``reasoning`` items. The
translators map each to the others; this module holds the rules they share.

Signatures. Anthropic signs each thinking block so it can verify the block when it comes back
in a later request. Thinking that a local model produced has no such signature, and turnout
cannot make one Anthropic would accept; its blocks carry ``TURNOUT_SIGNATURE``, a marker that
certifies nothing and only says "turnout made this block". When a history goes back to:

- an OpenAI-compatible upstream: every thinking block's text becomes ``reasoning_content`` on
  its assistant message (signatures are meaningless there); ``redacted_thinking`` (encrypted by
  Anthropic) is dropped;
- Anthropic, natively: blocks with Anthropic's signatures go byte for byte as the client sent
  them; blocks with turnout's marker, or with no signature, are removed first, because
  Anthropic refuses a request with a thinking block it did not sign.

Through OpenAI's shapes (a chat or Responses client of an Anthropic upstream), signed thinking
travels whole as ``thinking_blocks`` in chat (adapters/anthropic/thinking.py) and sealed in a
reasoning item's ``encrypted_content`` in Responses (gateway/translate/reasoning_seal.py).
"""

from __future__ import annotations

from typing import Any

import msgspec

# The signature of a thinking block synthesized from a local model's reasoning.
TURNOUT_SIGNATURE = "turnout:unsigned"
# Put where removing unsigned thinking would leave an assistant turn empty (Anthropic refuses
# empty turns and empty text blocks).
OMITTED = "(thinking omitted)"


def anthropic_signed(signature: str | None) -> bool:
    """Whether a thinking block's signature may be one Anthropic made."""
    return bool(signature) and signature != TURNOUT_SIGNATURE


def without_unsigned_thinking(turn: msgspec.Raw) -> msgspec.Raw:
    """A native Messages turn without the thinking blocks Anthropic did not sign.

    Only called for turns known to hold one; every other block stays as it was.
    """
    decoded: dict[str, Any] = msgspec.json.decode(turn)
    content = decoded.get("content")
    if not isinstance(content, list):
        return turn
    kept = [block for block in content if not _unsigned(block)]
    decoded["content"] = kept or [{"type": "text", "text": OMITTED}]
    return msgspec.Raw(msgspec.json.encode(decoded))


def _unsigned(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") == "thinking"
        and not anthropic_signed(block.get("signature"))
    )


def joined(thoughts: list[str]) -> str | None:
    """Several thinking pieces of one turn as one ``reasoning_content`` (None when empty)."""
    text = "\n\n".join(t for t in thoughts if t)
    return text or None


def attach(
    messages: list[dict[str, Any]],
    thoughts: list[str],
    added: bool,
    blocks: list[dict[str, Any]] | None = None,
) -> None:
    """Thinking from Responses reasoning items onto the assistant message that followed them.

    ``added``: the item after them made or extended that message. Otherwise (a user message
    came first) the thinking belongs to no answer and is dropped. ``blocks``: Anthropic's
    signed thinking among it, carried whole as ``thinking_blocks`` (adapters/anthropic/
    thinking.py). ``thoughts`` and ``blocks`` are emptied.
    """
    last = messages[-1] if messages else None
    text = joined(thoughts)
    thoughts.clear()
    signed = list(blocks or ())
    if blocks:
        blocks.clear()
    if not added or last is None or last.get("role") != "assistant":
        return
    if signed:
        last.setdefault("thinking_blocks", []).extend(signed)
    if text is None:
        return
    before = last.get("reasoning_content")
    last["reasoning_content"] = f"{before}\n\n{text}" if before else text
