"""The nouns of memory: what is stored, where it belongs, and what a query finds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# conversation: an exchange (user message and reply); kb: knowledge; task: work to do or done;
# event: something that happened (seed 004's "dao-event"); summary: written by /summarize.
KINDS = ("conversation", "kb", "task", "event", "summary")
# Other names callers use for a kind (seed 004 says "dao-event").
KIND_ALIASES = {"dao-event": "event"}


def kind_of(name: str) -> str | None:
    """The kind a caller means, or None when there is no such kind."""
    name = KIND_ALIASES.get(name, name)
    return name if name in KINDS else None


@dataclass(frozen=True, slots=True)
class Scope:
    """Which items an operation touches. None (or empty) means any value."""

    # None: every agent's items (administrators only; the API enforces it).
    agent_id: str | None
    project: str | None = None
    channel: str | None = None
    session_id: str | None = None
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to store. Empty strings mean "none" for project, channel and session."""

    agent_id: str
    kind: str
    content: str
    project: str = ""
    channel: str = ""
    session_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # Unix seconds; 0: now.
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class MemoryItem:
    id: int
    agent_id: str
    kind: str
    content: str
    project: str
    channel: str
    session_id: str
    meta: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class Hit:
    """A found item: its cosine similarity to the query, and the score it was ranked by."""

    item: MemoryItem
    similarity: float
    score: float
