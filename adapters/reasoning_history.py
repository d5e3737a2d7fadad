"""Thinking in a translated history, for servers that do not read it.

The translators put a client's earlier thinking (Anthropic thinking blocks, Responses reasoning
items) on assistant messages as ``reasoning_content``, the field llama.cpp, vLLM and DeepSeek
read. A server that does not know it (OpenAI's own API) is sent the history without it: the
thinking is dropped, the conversation kept.
"""

from __future__ import annotations

import msgspec

from gateway.translate import Translated

_encode = msgspec.json.Encoder().encode
_FIELD = b'"reasoning_content"'


def without_reasoning_history(fields: dict[str, msgspec.Raw], original: object) -> None:
    """Remove ``reasoning_content`` from the messages in ``fields`` (a copy of ``original``).

    A translated body says whether it carries any (``Translated.reasoning_history``): no scan.
    One a plugin rebuilt is searched.
    """
    if isinstance(original, Translated) and not original.reasoning_history:
        return
    messages = fields.get("messages")
    if messages is None or _FIELD not in bytes(messages):
        return
    try:
        decoded = msgspec.json.decode(messages)
    except msgspec.DecodeError:
        return
    if not isinstance(decoded, list):
        return
    for message in decoded:
        if isinstance(message, dict):
            message.pop("reasoning_content", None)
    fields["messages"] = msgspec.Raw(_encode(decoded))


def without_thinking_blocks(fields: dict[str, msgspec.Raw], original: object) -> None:
    """Remove Anthropic's ``thinking_blocks`` (only Anthropic reads them; strict OpenAI-style
    servers refuse a field they do not know) from a translated body that says it has some."""
    if not (isinstance(original, Translated) and original.thinking_blocks):
        return
    messages = fields.get("messages")
    if messages is None:
        return
    decoded = msgspec.json.decode(messages)
    if isinstance(decoded, list):
        for message in decoded:
            if isinstance(message, dict):
                message.pop("thinking_blocks", None)
        fields["messages"] = msgspec.Raw(_encode(decoded))
