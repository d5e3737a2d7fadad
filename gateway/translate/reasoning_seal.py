"""A reasoning item's ``encrypted_content``, as turnout writes and reads it.

A client that keeps no state on the server (Codex: ``store: false`` with
``include: ["reasoning.encrypted_content"]``) sends each reasoning item back on the next turn,
and it is the only copy of that thinking anywhere. OpenAI's ``encrypted_content`` is a
ciphertext only OpenAI reads: a provider with ``responses_api`` (OpenAI itself) gets the
Responses body as it came and its ciphertext passes both ways unchanged
(gateway/translate/responses_native.py). Every other upstream is asked in OpenAI chat or
Anthropic Messages, so turnout writes its own:

    "turnout.r1." + base64url(JSON list of thinking blocks)

with the blocks in Anthropic's shape: ``{"type": "thinking", "thinking": text,
"signature": sig}`` (signature only for thinking Anthropic signed) and
``{"type": "redacted_thinking", "data": ...}``. Coming back, the text is replayed as
``reasoning_content`` on the answer it preceded (llama.cpp, DeepSeek, vLLM) and signed or
redacted blocks as ``thinking_blocks`` (the Anthropic adapter sends them to Anthropic byte for
byte, which verifies its own signatures).

Opaque by convention, not encrypted (like the compaction item, gateway/translate/
responses_compaction.py): the thinking is the caller's own and is also in the item's visible
content or summary, so secrecy would protect nothing; a client that alters it changes only its
own context, and Anthropic refuses any signed block whose text was changed. One turnout cannot
read (OpenAI's own ciphertext from another server, or a corrupted one) is ignored: the item's
visible text is used instead.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from gateway.translate import encode

_PREFIX = "turnout.r1."
# Carried blocks, in chat: the name LiteLLM gave the field, which chat clients already round
# trip on assistant messages.
BLOCKS = "thinking_blocks"


class ThinkingBlock(msgspec.Struct, omit_defaults=True):
    """One Anthropic thinking or redacted_thinking block, as carried in chat and sealed."""

    type: str = "thinking"
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


_BLOCKS = msgspec.json.Decoder(list[ThinkingBlock])


def seal(blocks: list[dict[str, Any]]) -> str:
    """Thinking blocks (as ``ThinkingBlock`` fields) as a reasoning item's
    ``encrypted_content``."""
    return _PREFIX + base64.urlsafe_b64encode(encode(blocks)).decode("ascii")


def seal_text(text: str) -> str:
    """Unsigned thinking (a local model's) as a reasoning item's ``encrypted_content``."""
    return seal([{"type": "thinking", "thinking": text}])


def unseal(content: str | None) -> list[ThinkingBlock] | None:
    """The blocks in an ``encrypted_content``; None when it is not turnout's or is damaged."""
    if not content or not content.startswith(_PREFIX):
        return None
    try:
        return _BLOCKS.decode(base64.urlsafe_b64decode(content[len(_PREFIX) :]))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None


def text_of(blocks: list[ThinkingBlock]) -> str:
    """The readable thinking of some blocks (redacted ones have none)."""
    return "\n\n".join(b.thinking for b in blocks if b.type == "thinking" and b.thinking)


def carried(blocks: list[ThinkingBlock]) -> list[dict[str, Any]]:
    """The blocks worth sending back to Anthropic: signed thinking and redacted thinking."""
    return [
        msgspec.to_builtins(b)
        for b in blocks
        if (b.type == "thinking" and b.signature) or (b.type == "redacted_thinking" and b.data)
    ]


def wants_encrypted(fields: dict[str, msgspec.Raw]) -> bool:
    """Whether a Responses request asked for ``reasoning.encrypted_content`` in ``include``."""
    given = fields.get("include")
    return given is not None and b"reasoning.encrypted_content" in bytes(given)
