"""The request bodies every stack gets: a ~2 KB chat request, streamed or not.

The bulk sits in the system prompt and earlier turns, and the last user message is short, so
the fake upstream's echo reply stays small (OpenAI-sized deltas when split into 20 chunks).
Streams ask for usage (``stream_options.include_usage``) so the upstream does the same work
whether turnout (which always asks for usage upstream) is in front of it or not.
"""

from __future__ import annotations

from typing import Any

import msgspec

BODY_BYTES = 2048

_SYSTEM = (
    "You are a careful assistant for a small engineering team. Answer briefly, cite the file "
    "and line you relied on, and say so plainly when you do not know. "
)
_TURNS = [
    ("user", "Where is the retry policy for upstream calls configured, and what are its defaults?"),
    (
        "assistant",
        "In routing.yaml under `routing`: retries 1, backoff 0.25 s doubling to 4 s, "
        "cooldown 30 s for a failed target. The loader in gateway/config.py holds the defaults.",
    ),
]
_LAST = "Thanks. Summarise the fallback order for the model named smart in one sentence."


def chat_body(model: str, stream: bool, size: int = BODY_BYTES) -> bytes:
    """A chat request of about ``size`` bytes (padded in the system prompt)."""
    body = _encode(model, stream, _SYSTEM)
    missing = size - len(body)
    if missing > 0:
        system = _SYSTEM + ("Keep the answer short. " * (missing // 23 + 1))[:missing]
        body = _encode(model, stream, system)
    return body


def _encode(model: str, stream: bool, system: str) -> bytes:
    messages = [{"role": "system", "content": system}]
    messages += [{"role": role, "content": text} for role, text in _TURNS]
    messages.append({"role": "user", "content": _LAST})
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": 256,
        "temperature": 0.2,
    }
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return msgspec.json.encode(request)
