"""Graceful shutdown that finishes what clients started (SIGTERM loses no request).

uvicorn's shutdown closes at once every connection with no response under way. A request
whose head was still arriving, or whose first bytes sat unread in the socket (closing a socket
with unread data sends a reset), or one a keep-alive client sent just then, was lost with no
answer and no usage row. With this, a request that has begun is served and the connection
closes after it; an idle connection gets ``DRAIN_SECONDS`` to begin one before it is closed.
uvicorn waits for the connections (up to its graceful-shutdown timeout) before the lifespan
stops, and with it the usage writer, which writes every row it holds.

Connections the kernel completed but uvicorn had not yet accepted are still reset when the
listener closes; a load balancer should stop sending before SIGTERM (deploy/ does).

No state of its own on the protocol objects (see gateway/connections.py for why): whether a
request is under way is read from uvicorn's ``scope`` and ``cycle``, and "idle at the last
look" travels in the timer's argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

# How long an idle connection may take to begin a request once shutdown starts: ample for
# bytes already on their way, short enough not to hold a restart up.
DRAIN_SECONDS = 0.5
# A stream with no end of its own (``GET /engine/events``) leaves a callable here in its
# request's scope: called once shutdown begins, it ends the stream, and the connection then
# drains like any other instead of holding the shutdown up for its whole grace period.
ON_SHUTDOWN = "turnout.on_shutdown"
# Set in the ASGI ``state`` once shutdown begins, so /health/readiness answers 503 to the
# requests still served while connections drain (a load balancer stops sending).
SHUTTING_DOWN = "turnout.shutting_down"


class DrainingShutdown(HttpToolsProtocol):
    def shutdown(self) -> None:
        scope = cast(dict[str, Any] | None, self.scope)
        # uvicorn shares ``app_state`` among connections and copies it into each new request's
        # scope; a request whose head is already arriving has its copy, marked here too.
        self.app_state[SHUTTING_DOWN] = True
        if scope is not None:
            scope.setdefault("state", {})[SHUTTING_DOWN] = True
        ending: Callable[[], None] | None = scope.get(ON_SHUTDOWN) if scope is not None else None
        if ending is not None:
            ending()
        self._drain(idle_before=False)

    def _drain(self, idle_before: bool) -> None:
        if self.transport.is_closing():
            return
        cycle: RequestResponseCycle | None = self.cycle
        scope = self.scope
        # uvicorn makes a new scope when a request's first byte arrives and adds "method"
        # when its head is complete, when it also makes the request's cycle.
        head_arriving = scope is not None and "method" not in scope
        answering = cycle is not None and not cycle.response_complete
        if not (head_arriving or answering):
            if idle_before:
                self.transport.close()
                return
        elif answering and cycle is not None:
            cycle.keep_alive = False  # the connection closes after this answer
        self.loop.call_later(DRAIN_SECONDS, self._drain, not (head_arriving or answering))


def draining(protocol: type[HttpToolsProtocol]) -> type[HttpToolsProtocol]:
    """``protocol`` with the draining shutdown above."""
    return type(protocol.__name__, (DrainingShutdown, protocol), {})
