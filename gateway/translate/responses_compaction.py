"""The ``compaction`` item: a conversation's summary, as ``/v1/responses/compact`` hands it out
and as it comes back in a later request's input.

OpenAI's is encrypted and opaque; turnout's is opaque only by convention (versioned base64 of
the summary's text): it must travel through the client and back, and nothing in it is secret
from the caller whose conversation it summarises. One from another server (OpenAI's own) cannot
be read here and is dropped, as a reasoning item's ciphertext is.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

_PREFIX = "turnout.c1."
# How the summary reaches a chat model: as the user's, the turn a summary stands in for.
SUMMARY_HEADER = (
    "Earlier turns of this conversation were compacted. Summary of what happened so far:\n\n"
)


def seal(summary: str) -> str:
    """A summary as a compaction item's ``encrypted_content``."""
    return _PREFIX + base64.urlsafe_b64encode(summary.encode()).decode("ascii")


def unseal(content: str | None) -> str | None:
    """The summary in a compaction item's ``encrypted_content``; None when it is not turnout's."""
    if not content or not content.startswith(_PREFIX):
        return None
    try:
        return base64.urlsafe_b64decode(content[len(_PREFIX) :]).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def compaction_messages(content: str | None) -> list[dict[str, Any]]:
    """The chat message a compaction item stands for (none for one turnout cannot read)."""
    summary = unseal(content)
    if summary is None:
        return []
    return [{"role": "user", "content": SUMMARY_HEADER + summary}]
