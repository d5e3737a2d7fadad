"""Stored Responses (``responses:`` in routing.yaml): what ``store: true`` keeps, how long, and
which model compacts a conversation."""

from __future__ import annotations

import msgspec


class Responses(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/responses`` with ``store: true`` (the API's default) and what reads it back."""

    # false: nothing is stored, and previous_response_id is refused.
    store: bool = True
    # Stored responses older than this are deleted (OpenAI keeps them 30 days).
    retention_hours: float = 720.0
    # The stored responses of every key together; past this the oldest go first.
    max_bytes: int = 512 * 1024 * 1024
    # Recent responses kept decoded in memory, so continuing a conversation reads no database.
    cache_bytes: int = 64 * 1024 * 1024
    # Responses waiting for the database (down, or behind): past this the oldest are dropped
    # unwritten, counted and logged. Requests never wait for the database.
    max_pending_bytes: int = 64 * 1024 * 1024
    # The logical model (a local role is one too) that writes /v1/responses/compact's summary;
    # "" uses the model the request names.
    summariser: str = ""
