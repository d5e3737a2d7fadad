"""The mcp executor: tools of MCP servers (stdio or streamable HTTP), through the ``mcp`` SDK.

Each configured server has one owner task that alone connects, lists the server's tools into
the registry, and reconnects when the connection dies; callers only borrow the live client.
The SDK's client runs anyio task groups that must be entered and left by the same task, which
is one more reason a single task owns each connection.

A dead connection is noticed three ways: the transport's read stream ends (a stdio server
exiting closes its stdout at once), a call fails on the transport, or the periodic re-listing
of tools fails (an HTTP server that went away). The owner then reconnects with backoff. Tools
stay registered meanwhile: a call waits for the connection to come back, up to the server's
``connect_timeout_seconds``, instead of the tool vanishing from listings and agent plans.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from gateway.errors import ToolFailed
from gateway.plugins.tools.metrics import ToolMetrics
from gateway.plugins.tools.registry import Caller, ToolRegistry, ToolSpec, function_name
from gateway.plugins.tools.settings import McpServer, ToolDefinition

if TYPE_CHECKING:
    # The SDK is imported where a server is connected or called, never with this module: it
    # brings pydantic and ~270 modules, measured at 0.4-0.6 s of `turnout serve`'s start-up
    # on the 2-core bench machine, paid by every gateway with the tools plugin even when no
    # MCP server is configured (issue 13: ready in <= 1 s).
    import mcp_types
    from mcp import Client
    from mcp.client._transport import Transport, TransportStreams
    from mcp.shared._stream_protocols import ReadStream
    from mcp.shared.message import SessionMessage

log = logging.getLogger("turnout.tools.mcp")

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 30.0
# A server that pages its tool list forever cannot hang the owner task.
_MAX_PAGES = 100
# Errors that mean the connection, not the call, is broken.
_TRANSPORT_ERRORS = (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, EOFError)


class _EndSignal:
    """The transport's read stream, unchanged except that its end wakes the owner task."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], on_end: Callable[[], None]):
        self._inner = inner
        self._on_end = on_end

    def __getattr__(self, name: str) -> Any:
        # ``last_context`` and whatever else the SDK reads off its streams.
        return getattr(self._inner, name)

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._on_end()
            raise

    async def aclose(self) -> None:
        self._on_end()
        await self._inner.aclose()

    def __aiter__(self) -> _EndSignal:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self._inner.__anext__()
        except (StopAsyncIteration, anyio.ClosedResourceError):
            self._on_end()
            raise

    async def __aenter__(self) -> _EndSignal:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._on_end()
        return await self._inner.__aexit__(exc_type, exc, tb)


@asynccontextmanager
async def _watched(
    transport: Transport, on_end: Callable[[], None]
) -> AsyncIterator[TransportStreams]:
    async with transport as (read, write):
        yield _EndSignal(read, on_end), write


def _transport(settings: McpServer) -> Transport:
    from mcp import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    if settings.url:
        return streamable_http_client(settings.url)
    command, *args = settings.command
    parameters = StdioServerParameters(
        command=command, args=args, env=dict(settings.env) or None, cwd=settings.cwd or None
    )
    return stdio_client(parameters)


def result_of(answer: mcp_types.CallToolResult) -> Any:
    """What a call answered: structured content when the server gave some, else its text."""
    import mcp_types

    if answer.is_error:
        raise ToolFailed(_text(answer.content) or "the MCP tool reported an error")
    if answer.structured_content is not None:
        return answer.structured_content
    if all(isinstance(block, mcp_types.TextContent) for block in answer.content):
        return _text(answer.content)
    return [
        block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in answer.content
    ]


def _text(blocks: list[mcp_types.ContentBlock]) -> str:
    import mcp_types

    return "\n".join(b.text for b in blocks if isinstance(b, mcp_types.TextContent))


class McpConnection:
    """One MCP server: its owner task, its live client, and the tools it put in the registry."""

    def __init__(
        self,
        name: str,
        settings: McpServer,
        registry: ToolRegistry,
        metrics: ToolMetrics | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._registry = registry
        self._metrics = metrics
        self._client: Client | None = None
        self._connected = asyncio.Event()
        # Set once the first attempt to connect has succeeded or failed (start() waits for it).
        self._tried = asyncio.Event()
        # Set by anything that should make the owner look at the connection now.
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Tool id → the server's name for it, for the tools this connection registered.
        self._listed: dict[str, str] = {}
        self.connects = 0
        self.last_error = ""

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Start the owner task; wait for its first attempt so tools are listed before requests."""
        self._gauge(0)
        self._task = asyncio.get_running_loop().create_task(self._own(), name=f"mcp-{self.name}")
        await self._tried.wait()
        if not self.connected:
            log.warning("MCP server %s not connected; retrying: %s", self.name, self.last_error)

    async def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                # Shielded: on a timeout the task is cancelled below, not by wait_for mid-exit.
                await asyncio.wait_for(asyncio.shield(self._task), self._settings.timeout_seconds)
            except TimeoutError:
                log.warning("MCP server %s did not disconnect in time; cancelling", self.name)
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for tool_id in list(self._listed):
            self._registry.remove(tool_id)
        self._listed.clear()

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        import mcp_types
        from mcp.shared.exceptions import MCPError

        client = await self._live_client()
        try:
            answer = await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self._wake.set()
                raise ToolFailed(f"MCP server {self.name} went away during the call") from None
            raise ToolFailed(f"MCP server {self.name}: {exc.message}") from None
        except _TRANSPORT_ERRORS as exc:
            self._wake.set()
            raise ToolFailed(f"MCP server {self.name}: {type(exc).__name__}: {exc}") from None
        return result_of(answer)

    async def _live_client(self) -> Client:
        """The connected client, waiting for a reconnection (up to connect_timeout_seconds)."""
        try:
            async with asyncio.timeout(self._settings.connect_timeout_seconds):
                # The owner sets and clears client and event together, but the connection may
                # have died again between the event firing and this task running: check again.
                while (client := self._client) is None:
                    await self._connected.wait()
        except TimeoutError:
            detail = f": {self.last_error}" if self.last_error else ""
            raise ToolFailed(f"MCP server {self.name} is not connected{detail}") from None
        return client

    # --- the owner task -----------------------------------------------------------------------

    async def _own(self) -> None:
        delay = _BACKOFF_FIRST
        while not self._stopping:
            before = self.connects
            try:
                await self._connection()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning("MCP server %s: %s", self.name, self.last_error)
            self._tried.set()
            if self._stopping:
                break
            # A connection that worked earns a quick retry; repeated failures back off.
            delay = _BACKOFF_FIRST if self.connects > before else min(delay * 2, _BACKOFF_MAX)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def _connection(self) -> None:
        from mcp import Client

        self._wake.clear()
        settings = self._settings
        async with AsyncExitStack() as stack:
            async with asyncio.timeout(settings.connect_timeout_seconds):
                transport = _watched(_transport(settings), self._wake.set)
                client = await stack.enter_async_context(Client(transport, cache=None))
                listing = await self._list(client)
            self._publish(listing)
            self._client = client
            self.connects += 1
            self.last_error = ""
            self._connected.set()
            self._tried.set()
            self._gauge(1)
            log.info("MCP server %s connected: %d tools", self.name, len(self._listed))
            try:
                await self._watch(client)
            finally:
                self._connected.clear()
                self._client = None
                self._gauge(0)
                if not self._stopping:
                    log.warning("MCP server %s disconnected; reconnecting", self.name)

    async def _watch(self, client: Client) -> None:
        """Until something wakes the owner: re-list tools every ``refresh_seconds``."""
        settings = self._settings
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), settings.refresh_seconds)
                return
            except TimeoutError:
                pass
            async with asyncio.timeout(settings.timeout_seconds):
                listing = await self._list(client)
            self._publish(listing)

    async def _list(self, client: Client) -> list[mcp_types.Tool]:
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    def _publish(self, listing: list[mcp_types.Tool]) -> None:
        """Make the registry hold exactly this server's current tools."""
        settings = self._settings
        prefix = self.name if settings.prefix is None else settings.prefix
        others = {e.spec.id for e in self._registry if e.spec.id not in self._listed}
        wanted: dict[str, ToolSpec] = {}
        remote: dict[str, str] = {}
        for tool in listing:
            if settings.include and tool.name not in settings.include:
                continue
            tool_id = function_name(f"{prefix}_{tool.name}" if prefix else tool.name, others)
            remote[tool_id] = tool.name
            wanted[tool_id] = ToolSpec(
                id=tool_id,
                title=tool.title or tool.name,
                description=tool.description or tool.title or tool.name,
                input_schema=tool.input_schema,
                output_schema=tool.output_schema,
                executor="mcp",
                target=f"{self.name}/{tool.name}",
                allowed_agents=settings.allowed_agents,
                timeout=settings.timeout_seconds,
            )
        for tool_id in list(self._listed):
            entry = self._registry.get(tool_id)
            if tool_id not in wanted or entry is None or entry.spec != wanted[tool_id]:
                self._registry.remove(tool_id)
                del self._listed[tool_id]
        for tool_id, spec in wanted.items():
            if tool_id in self._listed:
                continue
            try:
                self._registry.add(McpTool(spec, self, remote[tool_id]))
            except ValueError as exc:
                log.warning("MCP server %s: tool %s left out: %s", self.name, tool_id, exc)
                continue
            self._listed[tool_id] = remote[tool_id]

    def _gauge(self, value: int) -> None:
        if self._metrics is not None:
            self._metrics.mcp_up.labels(self.name).set(value)


class McpTool:
    def __init__(self, spec: ToolSpec, connection: McpConnection, remote_name: str) -> None:
        self._spec = spec
        self._connection = connection
        self._remote = remote_name

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, arguments: dict[str, Any], caller: Caller) -> Any:
        return await self._connection.call(self._remote, arguments)


class McpServers:
    """Every configured MCP server, as one service of the registry."""

    def __init__(
        self,
        servers: dict[str, McpServer],
        registry: ToolRegistry,
        metrics: ToolMetrics | None = None,
    ) -> None:
        self.connections = {
            name: McpConnection(name, settings, registry, metrics)
            for name, settings in servers.items()
        }

    async def start(self) -> None:
        # Concurrently: a slow server must not hold up the others, or start-up.
        await asyncio.gather(*(c.start() for c in self.connections.values()))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.connections.values()))


def mcp_kind(servers: McpServers) -> Callable[[ToolDefinition], McpTool]:
    """The ``mcp`` executor kind: one tool of a configured server, target ``<server>/<tool>``,
    for when it needs its own id, schema or permissions."""

    def build(definition: ToolDefinition) -> McpTool:
        server, slash, tool = definition.target.partition("/")
        connection = servers.connections.get(server)
        if not slash or not tool or connection is None:
            known = ", ".join(sorted(servers.connections)) or "none configured"
            raise ValueError(
                f"target: expected '<mcp server>/<tool>' naming one of tools.mcp_servers ({known})"
            )
        return McpTool(ToolSpec.from_definition(definition), connection, tool)

    return build
