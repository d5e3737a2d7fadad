"""One stored response: who owns it, what it answered, and its items decoded once when needed."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from gateway.translate.responses import Item


class _Output(msgspec.Struct):
    # Only the output items: the rest of the Response (its echoed tools, tens of KB from Codex)
    # is skipped by the decoder, unread.
    output: list[Item] = []


class _Head(msgspec.Struct):
    id: str
    status: str = "completed"


_ITEMS = msgspec.json.Decoder(list[Item])
_OUTPUT = msgspec.json.Decoder(_Output)
_HEAD = msgspec.json.Decoder(_Head)


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose a stored response is: the key it came with and the agent it spoke for."""

    key_id: str | None
    agent_id: str


@dataclass(slots=True)
class StoredResponse:
    """A Response object as the client saw it, and the input items of its own request.

    ``input`` and ``response`` stay JSON (what GET answers and the database keeps); the items a
    continuation replays are decoded from them the first time one asks, then kept.
    """

    id: str
    owner: Owner
    created_at: float
    previous_id: str | None
    model: str
    input: bytes
    response: bytes
    _items: list[Item] | None = field(default=None, repr=False)
    # The provider that answered natively, in its own Responses API (its id is the
    # provider's): a continuation sent there passes the id on instead of replaying. Kept in
    # memory only; a response read back from the database is replayed.
    upstream: str | None = None

    @property
    def size(self) -> int:
        return len(self.input) + len(self.response)

    def items(self) -> list[Item]:
        """This turn as the conversation continues from it: its input items, then its output."""
        items = self._items
        if items is None:
            items = self._items = [
                *_ITEMS.decode(self.input),
                *_OUTPUT.decode(self.response).output,
            ]
        return items


def response_head(body: bytes) -> tuple[str, str]:
    """A Response object's id and status, without decoding the rest of it."""
    head = _HEAD.decode(body)
    return head.id, head.status
