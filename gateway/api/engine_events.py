"""``GET /engine/events``: the engines' state and stage changes as a server-sent event stream.

    curl -N localhost:8080/engine/events
    data: {"role":"fast","state":"stopped","stage":"stopping","subject":"coder","text":"stopping role coder","at":1765090000.1}

First the current event of every role, then each change as the supervisor publishes it
(``gateway/engines/events.py``); a comment now and then keeps proxies from closing a quiet
stream. For the dashboard and ``turnout switch``. It ends when the client leaves (the stream
is cancelled) or when the gateway stops: the server tells it as shutdown begins
(``gateway/draining.py``), since a stream with no end of its own would hold the shutdown up
until its grace period ran out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import msgspec
from litestar.response import ServerSentEvent, ServerSentEventMessage

from gateway.draining import ON_SHUTDOWN
from gateway.engines.events import EngineEvents

# The comment that ends the snapshot of current states.
SUBSCRIBED = "subscribed"
# Seconds between comments on a quiet stream.
KEEPALIVE_SECONDS = 15.0


def engine_events(events: EngineEvents, scope: MutableMapping[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(_feed(events, scope))


async def _feed(
    events: EngineEvents, scope: MutableMapping[str, Any]
) -> AsyncIterator[ServerSentEventMessage]:
    async with events.subscribe() as reader:
        scope[ON_SHUTDOWN] = reader.close
        for current in events.snapshot():
            yield ServerSentEventMessage(data=msgspec.json.encode(current))
        # Everything after this comment happened after the subscription: a client that asks
        # for a switch once it sees it (turnout switch) misses none of that switch's stages.
        yield ServerSentEventMessage(comment=SUBSCRIBED, data=None)
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    item = await reader.next()
            except TimeoutError:
                yield ServerSentEventMessage(comment="keepalive", data=None)
                continue
            if item is None:
                return
            yield ServerSentEventMessage(data=msgspec.json.encode(item))
