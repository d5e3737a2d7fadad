"""A ``Client`` that copies what is sent into a capture entry, then sends it on unchanged."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.asgi import Headers, Scope
    from gateway.captures.entry import Entry
    from gateway.pipeline.client import Client


class RecordingClient:
    """``inner``, with its answer (whole, or the stream's events as sent) kept in ``entry``."""

    __slots__ = ("_entry", "_inner", "scope")

    def __init__(self, inner: Client, entry: Entry) -> None:
        self._inner = inner
        self._entry = entry
        self.scope: Scope = inner.scope

    @property
    def started(self) -> bool:
        return self._inner.started

    @started.setter
    def started(self, value: bool) -> None:
        self._inner.started = value

    async def body(self) -> bytes:
        return await self._inner.body()

    def watch(self) -> None:
        self._inner.watch()

    def settle(self) -> None:
        self._inner.settle()

    def departed(self) -> bool:
        gone = self._inner.departed()
        if gone:
            self._entry.note = "client disconnected"
            self._entry.finished = time.perf_counter()
        return gone

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        entry = self._entry
        entry.status = status
        entry.response_headers = list(headers)
        entry.response.add(body)
        entry.finished = time.perf_counter()
        await self._inner.answer(status, body, headers)

    async def start(self, headers: Headers) -> None:
        first = not self._inner.started
        await self._inner.start(headers)
        if first:
            # After: the transport adds its own (content-type) to the list it is given.
            self._entry.status = 200
            self._entry.response_headers = list(headers)

    async def write(self, data: bytes) -> None:
        self._entry.response.add(data)
        await self._inner.write(data)

    async def end(self) -> None:
        self._entry.finished = time.perf_counter()
        await self._inner.end()
