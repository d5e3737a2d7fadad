"""Small raw-ASGI helpers for the hot path (body reading, responses, disconnect watching).

The proxy endpoints are plain ASGI callables mounted in Litestar: measured on this machine,
Litestar's request/response machinery costs ~20% throughput and ~0.3 ms p50 over raw ASGI
for a forwarding proxy (see bench/ and ../shared/reference/perf.md). Everything that is not
on the per-request forwarding path uses normal Litestar controllers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import BodyTooLarge, ClientGone
from gateway.nesting import check_depth

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# Scope keys shared by gateway/connections.py and the pipeline's HTTP client: a server whose
# protocol cancels a request's task when its connection is lost finds the task under ``TASK``
# (None while nothing may be cancelled) and marks the scope ``GONE`` before cancelling.
# ``pipeline.endpoint.HotPaths`` adds ``TASK`` when that server runs it.
TASK = "turnout.task"
GONE = "turnout.gone"

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is {int(declared)} bytes; the limit is {limit}")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        return check_depth(body)
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body"):
            return check_depth(b"".join(parts))


async def send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes, headers: Headers
) -> None:
    headers.append((b"content-type", content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class DisconnectWatch:
    """Cancels the request's task when the client disconnects, so upstream work stops too.

    uvicorn silently drops ``send()`` calls after a disconnect, so without this a stream
    would keep pulling tokens from the upstream for nobody, and a non-streaming call would
    run to completion (the upstream keeps computing). ``receive()`` is the only signal.
    """

    __slots__ = ("_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._watch(receive)
        )

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self._task.cancel()
                return

    def stop(self) -> None:
        """Call before the last ``send`` and in ``finally``: a finished response is no disconnect.

        Dropping the reference breaks the cycle task -> coroutine -> self -> task, which would
        otherwise keep each request's objects (transport, scope) alive until the cyclic GC runs.
        """
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher.cancel()

    def absorb(self) -> bool:
        """After catching CancelledError: True if it was ours (the client left), and undo it."""
        if self.gone:
            self._task.uncancel()
            return True
        return False
