"""An example third-party turnout plugin (see ../README.md).

A class, so turnout makes one instance per gateway: what it records stays with that gateway.
Settings come from routing.yaml's ``plugins.settings.example`` through ``startup``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.plugins.context import Exchanged, PluginContext, RequestContext
from gateway.plugins.hookspecs import hookimpl
from turnout_example.echo import EchoAdapter


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

    @hookimpl
    def register_adapters(self, registry: Any) -> None:
        registry.register("example-echo", EchoAdapter)

    @hookimpl
    async def startup(self, context: PluginContext) -> None:
        self.settings = context.settings
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
