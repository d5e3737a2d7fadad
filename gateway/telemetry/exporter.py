"""Encoded spans, batched and posted to the OTLP/HTTP endpoint from the event loop.

As the SDK's BatchSpanProcessor does: a batch goes every ``schedule_delay_seconds``, or as soon
as ``max_batch`` spans wait; past ``max_queue`` waiting spans, new ones are dropped (counted,
and logged). The post is one aiohttp request per batch, a few hundred microseconds for up to
512 spans, on the loop that also serves requests: nothing here holds it longer than joining the
bytes. A batch the endpoint refuses, or that fails to arrive, is dropped with a log line (at
most one a minute): traces must never slow or stop the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import ssl
import time

import aiohttp

from gateway.telemetry.protobuf import export_request
from gateway.telemetry.settings import Export

log = logging.getLogger("turnout.telemetry")

SCOPE = ("turnout", "0.1.0")
_WARN_EVERY_SECONDS = 60.0


class BatchExporter:
    __slots__ = (
        "_closing",
        "_export",
        "_last_warning",
        "_pending",
        "_session",
        "_ssl",
        "_task",
        "_wake",
        "dropped",
        "failed",
        "sent",
    )

    def __init__(self, export: Export) -> None:
        self._export = export
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ssl = _ssl_context(export)
        self._last_warning = 0.0
        self._closing = False
        self.sent = self.dropped = self.failed = 0

    def add(self, spans: list[bytes]) -> None:
        pending = self._pending
        if len(pending) >= self._export.max_queue:
            self.dropped += len(spans)
            self._warn(f"{self.dropped} spans dropped so far: the export queue is full")
            return
        pending.extend(spans)
        if self._task is None:
            if not self._closing:
                self._task = asyncio.get_running_loop().create_task(self._run())
        elif len(pending) >= self._export.max_batch:
            self._wake.set()

    async def _run(self) -> None:
        delay = self._export.schedule_delay_seconds
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            await self._flush(everything=not woken or self._closing)
            if self._closing:
                return

    async def _flush(self, everything: bool) -> None:
        """Full batches; with ``everything``, also what waits now, the last batch partial.

        Spans that arrive while a batch is being posted wait for the next turn unless they
        fill a batch: draining until empty instead sent a stream of small posts under load
        (measured: 189 posts of ~13 spans where 5 would do), each costing a whole request.
        """
        size = self._export.max_batch
        pending = self._pending
        owed = len(pending) if everything else 0
        while len(pending) >= size or owed > 0:
            batch = pending[:size]
            del pending[:size]
            owed -= len(batch)
            await self._post(batch)

    async def _post(self, spans: list[bytes]) -> None:
        export = self._export
        body = export_request(export.resource, SCOPE, spans)
        headers = {**export.headers, "Content-Type": "application/x-protobuf"}
        if export.gzip:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=export.timeout_seconds)
            )
        try:
            async with self._session.post(
                export.endpoint, data=body, headers=headers, ssl=self._ssl
            ) as response:
                await response.read()
                if response.status >= 300:
                    raise OSError(f"{export.endpoint} answered {response.status}")
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            self.failed += len(spans)
            self._warn(f"{len(spans)} spans not exported ({self.failed} so far): {exc}")
            return
        self.sent += len(spans)

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_SECONDS or not self._last_warning:
            self._last_warning = now
            log.warning("traces: %s", text)

    async def close(self) -> None:
        """Sends what waits, then lets go of the connection."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            # Woken, it sends everything that waits (a post under way included), then ends.
            self._wake.set()
            await task
        while self._pending:
            await self._flush(everything=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _ssl_context(export: Export) -> ssl.SSLContext | bool:
    """True: aiohttp's default verification; a context when TLS files are named."""
    if not (export.certificate or export.client_certificate):
        return True
    context = ssl.create_default_context(cafile=export.certificate or None)
    if export.client_certificate:
        context.load_cert_chain(export.client_certificate, export.client_key or None)
    return context
