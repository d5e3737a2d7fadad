"""A scripted coding-agent session: an upstream that plays tool calls, and a recording tap.

``ScriptedSession`` is a ``FakeOpenAI`` (chat completions, the wire format of llama-server)
whose answer depends on how far the conversation has got: a request that offers tools and has
``n`` tool results so far gets step ``n`` of ``steps`` (a tool call), and once the steps are
used up, or when the request offers no tools (a client's side requests: titles, summaries),
a plain text answer. Each step lists candidate calls; the first whose tool the request offers
is played, so one script drives Claude Code (``Read``, ``Bash``, ``Edit``) and Codex
(``shell``/``exec_command``, ``apply_patch``) alike.

``RecordingTap`` sits between a client and the gateway and keeps every request body it
forwards: what a real client sent, to replay later (bench/agent_session.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.openai_upstream import OK, TOOLS, FakeOpenAI, ToolCall

# One step: candidate (tool name, arguments) pairs, built for the session's working folder.
Step = Callable[[str], list[tuple[str, dict[str, Any]]]]


def _read(workdir: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("Read", {"file_path": f"{workdir}/notes.txt"}),
        ("exec_command", {"cmd": "cat notes.txt", "workdir": workdir}),
        ("shell", {"command": ["cat", "notes.txt"], "workdir": workdir}),
    ]


def _list(workdir: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("Bash", {"command": "ls", "description": "List the files"}),
        ("exec_command", {"cmd": "ls", "workdir": workdir}),
        ("shell", {"command": ["ls"], "workdir": workdir}),
    ]


PATCH = "*** Begin Patch\n*** Update File: notes.txt\n@@\n-hello\n+hello, turnout\n*** End Patch\n"

SED = "sed -i 's/^hello$/hello, turnout/' notes.txt"


def _edit(workdir: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "Edit",
            {
                "file_path": f"{workdir}/notes.txt",
                "old_string": "hello",
                "new_string": "hello, turnout",
            },
        ),
        ("apply_patch", {"input": PATCH}),
        # Codex offers apply_patch only for models it knows; elsewhere it edits through a shell.
        ("exec_command", {"cmd": SED, "workdir": workdir}),
        ("shell", {"command": ["bash", "-lc", SED], "workdir": workdir}),
    ]


STEPS: tuple[Step, ...] = (_read, _list, _edit)


def tool_results(body: dict[str, Any]) -> int:
    return sum(
        1 for m in body.get("messages") or () if isinstance(m, dict) and m.get("role") == "tool"
    )


def offered_tools(body: dict[str, Any]) -> list[str]:
    names = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        name = (function or tool).get("name") if isinstance(function or tool, dict) else None
        if isinstance(name, str):
            names.append(name)
    return names


def next_call(
    body: dict[str, Any], workdir: str, steps: Sequence[Step] = STEPS
) -> tuple[str, str] | None:
    """The (name, arguments JSON) this request gets, or None for a text answer."""
    offered = offered_tools(body)
    step = tool_results(body)
    if not offered or step >= len(steps):
        return None
    for name, arguments in steps[step](workdir):
        if name in offered:
            return name, json.dumps(arguments)
    return None


class ScriptedSession(FakeOpenAI):
    """A chat upstream that walks a client through ``steps`` (see the module docstring)."""

    def __init__(self, workdir: str, steps: Sequence[Step] = STEPS, **options: Any) -> None:
        super().__init__(**options)
        self.workdir = workdir
        self.steps = tuple(steps)
        self._call: tuple[str, str] | None = None

    async def _chat(self, request: web.BaseRequest, rec: Any) -> web.StreamResponse:
        body = rec.body if isinstance(rec.body, dict) else {}
        # Set and read without an await in between (the scenario is picked synchronously at
        # the start of the parent's _chat), so concurrent requests never see each other's call.
        self._call = next_call(body, self.workdir, self.steps)
        self.scenario = TOOLS if self._call else OK
        return await super()._chat(request, rec)

    def _tool_calls(self, body: dict[str, Any]) -> list[ToolCall]:
        call = next_call(body, self.workdir, self.steps)
        assert call is not None
        name, arguments = call
        return [ToolCall(self._fmt.tool_call_id(), name, self._fmt.tool_arguments(arguments))]


@dataclass
class Recorded:
    method: str
    path: str
    body: Any


@dataclass
class RecordingTap:
    """A reverse proxy on a loopback port that records each request body it forwards."""

    target: str  # http://127.0.0.1:PORT of the gateway
    records: list[Recorded] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RecordingTap:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.records.append(Recorded(request.method, request.path, body))
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with self._session.request(
            request.method, self.target + request.path_qs, data=raw, headers=headers
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    response.headers[key] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
