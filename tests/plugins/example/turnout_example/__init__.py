"""An example third-party turnout plugin (see ../README.md).

A class, so turnout makes one instance per gateway: what it records stays with that gateway.
Settings come from routing.yaml's ``plugins.settings.example`` through ``startup``; its own
top-level section (``example:``) is decoded and checked by ``check_config``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import get
from litestar.types import ControllerRouterHandler

from adapters.base import UpstreamReply
from gateway.config import Config, Model, section
from gateway.forwarder import OpenStream, Trace
from gateway.plugins.context import Exchanged, Forwarding, PluginContext, RequestContext
from gateway.plugins.hookspecs import hookimpl
from gateway.wire import ClientRequest
from turnout_example.echo import EchoAdapter


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``example:`` in routing.yaml."""

    greeting: str = "hello"
    # Every request goes through a counting stand-in for the gateway's forwarder.
    wrap: bool = False


class Counting:
    """Stands in for the gateway's forwarder, counting what it passes on."""

    def __init__(self, inner: Forwarding, plugin: ExamplePlugin) -> None:
        self._inner = inner
        self._plugin = plugin

    async def send(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> UpstreamReply:
        self._plugin.wrapped += 1
        return await self._inner.send(model, request, request_id, trace)

    async def open_stream(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> OpenStream:
        self._plugin.wrapped += 1
        return await self._inner.open_stream(model, request, request_id, trace)


@dataclass
class Answer:
    request_id: str
    route: str
    status: int
    reply_text: str | None


class ExamplePlugin:
    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.answers: list[Answer] = []
        self.stopped = False
        self.section = Section()
        self.wrapped = 0

    @hookimpl
    def check_config(self, config: Config) -> list[str]:
        if not section(config, "example", Section).greeting:
            return ["example.greeting: expected some text"]
        return []

    @hookimpl
    def register_routes(self) -> Sequence[ControllerRouterHandler]:
        plugin = self

        @get("/v1/example", sync_to_thread=False)
        def greeting() -> dict[str, Any]:
            return {"greeting": plugin.section.greeting, "wrapped": plugin.wrapped}

        return [greeting]

    @hookimpl
    def forwarder_for(self, forwarder: Forwarding) -> Forwarding | None:
        return Counting(forwarder, self) if self.section.wrap else None

    @hookimpl
    def register_adapters(self, registry: Any) -> None:
        registry.register("example-echo", EchoAdapter)

    @hookimpl
    async def startup(self, context: PluginContext) -> None:
        self.settings = context.settings
        self.section = section(context.state.config, "example", Section)
        if self.settings.get("fail_startup"):
            raise RuntimeError("example was told to fail at start-up")

    @hookimpl
    async def before_upstream(self, request: RequestContext) -> None:
        await asyncio.sleep(float(self.settings.get("before_delay", 0)))
        stamp = self.settings.get("stamp")
        messages = request.messages()
        if stamp and messages and isinstance(messages[-1].get("content"), str):
            messages[-1]["content"] += stamp
            request.set_messages(messages)
        request.capture_reply = True

    @hookimpl
    async def after_response(self, request: RequestContext, exchanged: Exchanged) -> None:
        await asyncio.sleep(float(self.settings.get("after_delay", 0)))
        self.answers.append(
            Answer(request.request_id, request.route, exchanged.status, exchanged.reply_text)
        )

    @hookimpl
    async def shutdown(self) -> None:
        self.stopped = True
