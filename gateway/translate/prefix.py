"""Keeping a prompt's start the same from turn to turn, so engines' prefix caches hit.

llama-server, MLX, vLLM and Ollama reuse the cached prompt up to the first token that differs
from the last request. Anything a client puts at the very start that changes per request makes
them re-read the whole prompt (20-60k tokens for a coding agent) on every turn. The one such
thing known: Claude Code opens ``system`` with a billing line whose ``cch=`` changes on every
request (anthropics/claude-code#68900)::

    x-anthropic-billing-header: cc_version=2.1.177.01c; cc_entrypoint=cli; cch=36ee5;

It means nothing to a model, so for providers that ask for it (``strip_volatile_prefix``, on
for local ones) it is removed from the first system message, wherever that message came from:
an Anthropic request joins its system blocks into it, a chat client may send it as is. The
Anthropic API itself never loses it (adapter kinds registered with ``keeps_client_prefix``).

Pure: raw request fields in, raw request fields out; a request without the line is returned
as it came, after one byte search.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from gateway.config.upstreams import Provider
from gateway.translate import Fields, Translated, encode

# Transforms one request's fields just before they go to a provider.
RequestShaper = Callable[[Fields], Fields]

BILLING_LINE_START = "x-anthropic-billing-header:"
BILLING_MARKER = BILLING_LINE_START.encode()
# The line, matched where it starts a line: the header name, ``key=value;`` pairs, then the line
# break and blank lines after it. Values stop at whitespace, so text that follows the pairs on
# the same line (none seen so far) is kept.
_BILLING_LINE = re.compile(
    r"x-anthropic-billing-header:(?:[ \t]*[\w.-]+=[^;\s]*;?)*[ \t]*(?:\r?\n)*"
)
_SYSTEM_ROLES = ("system", "developer")
# Where the line sits when nothing came before it: ``[{"role":"system","content":"x-anth...``.
_HEAD = 512
_NEXT_MESSAGE = b'},{"role":'
_MESSAGES = msgspec.json.Decoder(list[msgspec.Raw])
_OBJECT = msgspec.json.Decoder(dict[str, Any])


def strip_billing_line(text: str) -> str:
    """``text`` without Claude Code's billing line(s); the same string when it has none."""
    at = text.find(BILLING_LINE_START)
    while at >= 0:
        if at == 0 or text[at - 1] == "\n":
            match = _BILLING_LINE.match(text, at)
            assert match is not None  # the pattern's pairs and line break are all optional
            text = text[:at] + text[match.end() :]
            at = text.find(BILLING_LINE_START, at)
        else:
            at = text.find(BILLING_LINE_START, at + 1)
    return text


def strip_volatile_prefix(fields: Fields) -> Fields:
    """The request with the billing line gone from its first system message.

    Only the first message can hold it: the line opens Claude Code's system prompt, and is
    looked for in the first bytes of ``messages`` only, unless the translation saw it (prompt
    layers may then have put their text before it). A line quoted later in a conversation is
    the user's text and stays. The rest of the conversation is copied, never decoded.
    """
    messages = fields.get("messages")
    if messages is None:
        return fields
    flagged = isinstance(fields, Translated) and fields.volatile_prefix
    if not flagged and BILLING_MARKER not in bytes(memoryview(messages)[:_HEAD]):
        return fields
    data = bytes(messages)
    split = _first_message(data)
    if split is None:
        return fields
    first, rest = split
    if first.get("role") not in _SYSTEM_ROLES:
        return fields
    content = first.get("content")
    stripped = _stripped_content(content)
    if stripped == content:
        return fields
    if stripped:
        first["content"] = stripped
        head = b"[" + encode(first)
    else:
        # The message held nothing else: it goes, and so does the comma after it.
        head, rest = b"[", rest[1:] if rest.startswith(b",") else rest
    shaped = (
        Translated(fields, reasoning_history=fields.reasoning_history)
        if isinstance(fields, Translated)
        else dict(fields)
    )
    shaped["messages"] = msgspec.Raw(head + rest)
    return shaped


def _first_message(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """The first message, decoded, and the encoded rest of the list after it (``,...]``).

    Its end is found without decoding the rest: ``},{"role":`` cannot occur inside a JSON
    string (its quotes would be escaped), and a JSON object starting at the list's first byte
    has exactly one end, so a candidate that decodes as an object is the first message.
    Messages keyed in another order are split by decoding the whole list instead.
    """
    if not data.startswith(b"[{"):
        return None
    end = data.find(_NEXT_MESSAGE)
    if end > 0:
        try:
            return _OBJECT.decode(data[1 : end + 1]), data[end + 1 :]
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    try:
        items = _MESSAGES.decode(data)
        first = _OBJECT.decode(items[0])
    except (msgspec.DecodeError, msgspec.ValidationError, IndexError):
        return None
    rest = encode(items[1:])
    return first, (b"," + rest[1:] if len(items) > 1 else b"]")


def _stripped_content(content: Any) -> Any:
    """A message content (text or parts) without the billing line; parts left empty go."""
    if isinstance(content, str):
        return strip_billing_line(content)
    if not isinstance(content, list):
        return content
    parts: list[Any] = []
    for part in content:
        text = part.get("text") if isinstance(part, dict) else None
        if isinstance(text, str) and part.get("type") == "text":
            kept = strip_billing_line(text)
            if kept != text:
                if not kept:
                    continue
                part = {**part, "text": kept}
        parts.append(part)
    return parts


def request_shapers(
    providers: Mapping[str, Provider], keeps_client_prefix: Callable[[str], bool]
) -> dict[str, RequestShaper]:
    """Per provider name, what its requests go through before they are sent (most: nothing).

    ``keeps_client_prefix``: whether an adapter kind always gets the prompt as sent (the
    adapter registry knows). Built once with the forwarder, so a request pays a dict lookup
    when its provider has none.
    """
    return {
        name: strip_volatile_prefix
        for name, provider in providers.items()
        if provider.strips_volatile_prefix and not keeps_client_prefix(provider.kind)
    }
