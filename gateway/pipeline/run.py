"""The order of one request's steps, for every client protocol and every transport."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.asgi import header
from gateway.auth import speaking_for
from gateway.config.peers import HOP_HEADER
from gateway.contract import Operation
from gateway.errors import ClientGone, GatewayError, Unfetched
from gateway.pipeline import accounting
from gateway.pipeline.admission import admit, before_upstream, resolve
from gateway.pipeline.call import Call
from gateway.pipeline.relay import Relay
from gateway.plugins.capture import CapturingStream

if TYPE_CHECKING:
    from gateway.pipeline.call import Dialect
    from gateway.pipeline.client import Client
    from gateway.state import GatewayState
    from gateway.streaming import StreamTranslator

log = logging.getLogger("turnout.ingress")

HOP = HOP_HEADER.encode()

_INTERNAL = GatewayError("internal gateway error; see the gateway log for the request id")


class Pipeline:
    """One client protocol's requests, forwarded as OpenAI chat with fallback."""

    __slots__ = ("_dialect", "_relay", "_state")

    def __init__(self, state: GatewayState, dialect: Dialect) -> None:
        self._state = state
        self._dialect = dialect
        self._relay = Relay(
            dialect,
            state.config.server.keepalive_seconds,
            state.config.limits.headers == "always",
            state.supervisor.events if state.supervisor is not None else None,
        )

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    @property
    def relay(self) -> Relay:
        return self._relay

    async def run(self, client: Client, request_id: str) -> None:
        """Answer one request on ``client``; never raises but for a cancel not the client's."""
        state = self._state
        metrics = state.metrics
        metrics.inflight.inc()
        call = Call(request_id)
        translator: StreamTranslator | None = None
        relay = self._relay
        body = b""
        try:
            call.identity = state.auth.identify(client.scope)
            body = await client.body()
            call.body_bytes = len(body)
            try:
                exchange = self._dialect.prepare(body, client.scope)
            except Unfetched as unfetched:
                # A stored response another replica wrote (gateway/responses_store/postgres.py):
                # read off the loop, then prepare again. Free on the path that does not raise.
                await unfetched.fetch()
                exchange = self._dialect.prepare(body, client.scope)
            request = exchange.request
            call.stream = request.stream
            model = resolve(state.models, request)
            call.model = model.name
            call.identity = speaking_for(call.identity, client.scope, request.fields)
            call.trace.agent = call.identity.agent_id
            # One attribute read without peers; with them, a request a peer sent here stays here.
            if state.fleet is not None and header(client.scope, HOP) is not None:
                call.trace.hopped = True
            if state.captures is not None:
                client = state.captures.watch(call, body, client)
            await admit(call, model, request, state.budgets, state.limiter)
            client.watch()
            plugins = state.plugins
            if plugins.active and request.op is Operation.CHAT:
                request = exchange.request = await before_upstream(
                    plugins, state, self._dialect.route, call, model, request, client.scope
                )
            # A plugin may answer in the forwarder's stead (the tools plugin's agent loop, for a
            # request naming server-side tools); one attribute read when none can.
            call.forwarder = (
                plugins.forwarder_for(state.forwarder, call.identity, request_id, model, request)
                if plugins.wraps_forwarder
                else None
            ) or state.forwarder
            if request.stream:
                translator = exchange.stream()
                if call.hooked is not None and call.hooked.capture_reply:
                    translator = call.capture = CapturingStream(translator)
                call.status = await relay.stream(call, model, request, translator, client)
            else:
                call.status = await relay.complete(call, model, exchange, client)
        except GatewayError as exc:
            if state.captures is not None:
                # Refused before it was admitted (a bad body, an unknown model): the requests
                # most worth a look when debugging a client.
                client = state.captures.refused(call, body, client)
            call.status = await relay.fail(call, exc, client, translator)
        except ClientGone:
            call.status = 499
        except asyncio.CancelledError:
            if not client.departed():
                raise
            call.status = 499
            metrics.child(metrics.disconnects, self._dialect.route).inc()
        except Exception:
            log.exception("request %s failed inside the gateway", request_id)
            call.status = await relay.fail(call, _INTERNAL, client, translator)
        finally:
            client.settle()
            metrics.inflight.dec()
            await accounting.settle(state, self._dialect.route, call)
