"""Request fields with no translation of their own: passed on, mapped, or ignored and said so.

Codex (Responses) and Claude Code (Messages) send fields that only tune OpenAI's or Anthropic's
own service. Each is a conscious choice here, listed in the README's field table; what is
ignored is named in the answer's ``x-turnout-ignored`` header (``ClientRequest.ignored``), so
a client never wonders whether a setting took effect. A native Anthropic upstream gets the
client's body untouched, ignored fields included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.translate import raw

# Chat completions knows these under the same name: prompt_cache_key routes to OpenAI's
# cache shard (local engines pick the llama.cpp slot holding the longest common prefix
# themselves), user and safety_identifier identify the end user.
_RESPONSES_PASSED = ("prompt_cache_key", "safety_identifier", "user")
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def responses_extras(fields: Mapping[str, msgspec.Raw], chat: dict[str, msgspec.Raw]) -> str:
    """Add the chat fields a Responses request's extras map to; the names of those ignored."""
    for name in _RESPONSES_PASSED:
        value = fields.get(name)
        if value is not None and bytes(value) != b"null":
            chat[name] = value
    reasoning = _object(fields.get("reasoning"))
    effort = reasoning.get("effort")
    if effort in _EFFORTS:
        chat["reasoning_effort"] = raw(effort)
    verbosity = _object(fields.get("text")).get("verbosity")
    if verbosity in ("low", "medium", "high"):
        chat["verbosity"] = raw(verbosity)
    ignored = []
    if _value(fields.get("service_tier")) not in (None, "auto", "default"):
        ignored.append("service_tier")
    # "disabled" (the default) is what turnout does: a conversation over the context is
    # refused (or goes to a fallback role with a longer one), never cut silently.
    if _value(fields.get("truncation")) == "auto":
        ignored.append("truncation")
    if _value(fields.get("max_tool_calls")) is not None:
        ignored.append("max_tool_calls")
    return ",".join(ignored)


def affinity_key(fields: Mapping[str, msgspec.Raw]) -> str:
    """What keeps a Responses conversation on one target: its ``prompt_cache_key``."""
    key = _value(fields.get("prompt_cache_key"))
    return key if isinstance(key, str) else ""


def wants_reasoning_summary(fields: Mapping[str, msgspec.Raw]) -> bool:
    """Whether a Responses request asked for reasoning summaries (``reasoning.summary``)."""
    return _object(fields.get("reasoning")).get("summary") in ("auto", "concise", "detailed")


def _value(value: msgspec.Raw | None) -> Any:
    if value is None:
        return None
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None


def _object(value: msgspec.Raw | None) -> dict[str, Any]:
    decoded = _value(value)
    return decoded if isinstance(decoded, dict) else {}
