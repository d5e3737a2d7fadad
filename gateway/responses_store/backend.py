"""Where stored responses persist behind the store's memory (gateway/responses_store/store.py):
the interface both databases implement (``store.backend_for`` picks one by ``server.database``).

SQLite (gateway/responses_store/sqlite.py) is a file on this machine, read inline on a cache
miss. PostgreSQL (gateway/responses_store/postgres.py) is shared by replicas, so a response
one wrote, another continues; it is read off the event loop, and tells the replicas of every
delete so none answers from a stale cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway.responses_store.records import StoredResponse


class Listener(Protocol):
    """What a shared backend tells the store about other replicas' changes (on the loop)."""

    def forget(self, response_ids: list[str]) -> None:
        """These were deleted (by any replica): drop them from memory."""
        ...

    def cached(self) -> list[str]:
        """The ids in memory: after notifications may have been missed (the connection for
        them was down), those the database no longer holds are ``forget``-ed."""
        ...


# One response by primary key, cheap enough to run on the event loop (a local file).
Read = Callable[[str], StoredResponse | None]


class Backend(Protocol):
    # Set by a backend read on the loop (SQLite); None: a miss is fetched with ``chain`` off
    # the loop, and the request waits for it (PostgreSQL).
    read_inline: Read | None
    # What a failed write raises: the batch stays pending and is retried.
    errors: tuple[type[BaseException], ...]

    async def open(self, listener: Listener) -> None:
        """Bring the schema up to date and connect; the database must answer at start."""
        ...

    async def chain(self, response_id: str) -> list[StoredResponse]:
        """The response and every one it continues (``previous_id`` back), those that exist."""
        ...

    async def write(self, records: list[StoredResponse], gone: list[str]) -> None:
        """Insert ``records`` and delete ``gone`` in one transaction."""
        ...

    async def prune(self, cutoff: float, max_bytes: int) -> None:
        """Delete what is older than ``cutoff``, then the oldest past ``max_bytes``."""
        ...

    async def close(self) -> None: ...
