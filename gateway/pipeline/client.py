"""The other end of one call, as the pipeline sees it: where the answer goes, whether it left.

Two implementations: an HTTP request (``endpoint.HttpClient``: ASGI messages, SSE framing)
and a chat on a WebSocket (gateway/api/websocket.py: each event becomes a socket message).
The pipeline's steps and relay are the same for both; nothing pretends to be the other.
"""

from __future__ import annotations

from typing import Protocol

from gateway.asgi import Headers, Scope


class Client(Protocol):
    # The caller's headers and peer, for identity: the HTTP request's own scope, or the
    # WebSocket's (with the key its auth message gave).
    scope: Scope
    # True once a stream's status and headers went out: errors from then on travel in-band.
    started: bool

    async def body(self) -> bytes:
        """The request body; raises BodyTooLarge or ClientGone."""
        ...

    def watch(self) -> None:
        """From now until ``settle()``, a caller that leaves cancels the running call."""
        ...

    def settle(self) -> None:
        """The answer is complete (or about to be): leaving from here on cancels nothing."""
        ...

    def departed(self) -> bool:
        """After a CancelledError: True when it was the caller leaving (and it is undone)."""
        ...

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """A whole answer (JSON) with its status."""
        ...

    async def start(self, headers: Headers) -> None:
        """Commits a 200 event stream with ``headers``; later calls do nothing."""
        ...

    async def write(self, data: bytes) -> None:
        """One or more whole SSE events of a started stream."""
        ...

    async def end(self) -> None:
        """The stream is over."""
        ...
