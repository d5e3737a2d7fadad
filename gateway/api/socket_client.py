"""What every pipeline ``Client`` on a WebSocket shares: one message's body in, and a cancel
(the client's, or the socket closing) that acts as an HTTP client's disconnect.

``/v1/chat/ws`` (``websocket.Chat``) and Responses over WebSocket (``responses_socket.Turn``)
differ only in how they write the answer back; the body limit and the cancel protocol with the
pipeline (``watch``/``settle``/``departed``, gateway/pipeline/client.py) are this one class.
"""

from __future__ import annotations

import asyncio

from gateway.asgi import Scope
from gateway.errors import BodyTooLarge


class SocketClient:
    __slots__ = ("_body", "_buffer", "_cancelled", "_limit", "_watched", "scope", "started", "task")

    def __init__(self, scope: Scope, body: bytes, limit: int) -> None:
        self.scope = scope
        self._body = body
        self._limit = limit
        self._buffer = b""
        self._cancelled = False
        self._watched = False
        self.started = False
        self.task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        """The client's cancel (or the socket closing): as an HTTP client that disconnects."""
        if self._cancelled:
            return
        self._cancelled = True
        if self._watched and self.task is not None:
            self.task.cancel()

    # --- the pipeline's side (gateway/pipeline/client.py) -------------------------------------

    async def body(self) -> bytes:
        body, self._body = self._body, b""
        if len(body) > self._limit:
            raise BodyTooLarge(f"request body exceeds the limit of {self._limit} bytes")
        return body

    def watch(self) -> None:
        self._watched = True
        if self._cancelled and self.task is not None:
            self.task.cancel()  # cancelled before the pipeline could be

    def settle(self) -> None:
        self._watched = False

    def departed(self) -> bool:
        if not self._cancelled:
            return False
        if self.task is not None:
            self.task.uncancel()
        return True
