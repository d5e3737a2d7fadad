"""While a stream waits for a local engine: keep-alive comments that say how far its swap got.

The relay sends a keep-alive comment every interval while the upstream has said nothing yet
(``relay.py``). When the request is queued for a local role (the gate sets
``Trace.engine_role``), the comments carry that role's stage instead, as the supervisor
publishes it (``gateway/engines/progress.py``)::

    : turnout: stopping role coder
    : turnout: starting role fast
    : turnout: loading role fast
    : turnout: role fast ready

Comments only: every SSE reader (OpenAI's and Anthropic's SDKs, a browser's EventSource)
skips them, so each dialect's stream stays what its clients expect. Stages go out as they
happen, and the current one stands in for the plain keep-alive while the request waits.

Only reached after a whole interval without an answer (the relay commits the status no
sooner, so fast failures keep their HTTP error status): a request answered at once, or one for
no local role, pays nothing. The stages of that first interval are replayed from the hub's
recent events.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.asgi import Headers
    from gateway.engines.events import EngineEvent, EngineEvents, Subscription
    from gateway.forwarder import OpenStream, Trace
    from gateway.pipeline.call import Call
    from gateway.pipeline.client import Client

PREFIX = b": turnout: "


def comment(item: EngineEvent) -> bytes:
    """One SSE comment; an engine's error text could hold a line break, which would end it."""
    text = " ".join(item.text.split())
    return PREFIX + text.encode("utf-8", "replace") + b"\n\n"


class Watch:
    """Which role's events this request shows: the one it is queued for, or the fallback the
    supervisor moved it to."""

    __slots__ = ("_fallbacks", "_last", "_trace")

    def __init__(self, trace: Trace) -> None:
        self._trace = trace
        # Kept after the lease clears ``engine_role``: the role's "ready" arrives about then.
        self._last = trace.engine_role
        self._fallbacks: dict[str, str] = {}

    def role(self) -> str:
        role = self._trace.engine_role or self._last
        self._last = role
        return self._fallbacks.get(role, role)

    def waiting(self) -> bool:
        return bool(self._trace.engine_role)

    def shows(self, item: EngineEvent) -> bool:
        role = self.role()
        if item.role != role:
            return False
        if item.stage == "falling back":
            self._fallbacks[role] = item.subject
        return True


async def wait_with_stages(
    opening: asyncio.Task[OpenStream],
    client: Client,
    headers: Headers,
    call: Call,
    events: EngineEvents,
    interval: float,
    keepalive: bytes,
) -> OpenStream:
    """Wait for the first upstream event, sending stage comments (see the module docstring).
    Called once a keep-alive interval has passed without one."""
    watch = Watch(call.trace)
    async with events.subscribe() as feed:
        await client.start(headers)
        shown = [e for e in events.since(call.started) if watch.shows(e)]
        current = events.latest.get(watch.role())
        for item in shown or ([current] if current is not None else []):
            await client.write(comment(item))
        if not shown and current is None:
            await client.write(keepalive)
        return await _follow(opening, client, watch, events, feed, interval, keepalive)


async def _follow(
    opening: asyncio.Task[OpenStream],
    client: Client,
    watch: Watch,
    events: EngineEvents,
    feed: Subscription,
    interval: float,
    keepalive: bytes,
) -> OpenStream:
    deadline = time.monotonic() + interval
    getter: asyncio.Task[EngineEvent | None] | None = feed.get_task()
    try:
        while True:
            waiting = (opening,) if getter is None else (opening, getter)
            timeout = max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if opening in done:
                return opening.result()
            if getter is not None and getter in done:
                item = getter.result()
                # None: the hub closed (the gateway stops); plain keep-alives from here on.
                getter = None if item is None else feed.get_task()
                if item is not None and watch.shows(item):
                    await client.write(comment(item))
                    deadline = time.monotonic() + interval
                continue
            current = events.latest.get(watch.role()) if watch.waiting() else None
            await client.write(comment(current) if current is not None else keepalive)
            deadline = time.monotonic() + interval
    finally:
        if getter is not None:
            getter.cancel()
