"""The tools plugin's hooks (entry point ``tools = gateway.plugins.tools.plugin``).

``register_tools`` registers the executor kinds (http, python, mcp) and the services they
need; ``startup`` builds the tools of ``tools.registry`` in routing.yaml (after every plugin's
``register_tools``, so kinds from other plugins work there too), then opens the HTTP client
and connects the MCP servers, which list their tools into the same registry.

Nothing is kept here: everything hangs off the gateway's registry (``state.tools``).
"""

from __future__ import annotations

from gateway.config import ConfigError
from gateway.plugins.context import PluginContext
from gateway.plugins.hookspecs import hookimpl
from gateway.plugins.tools.http import HttpClient, http_kind
from gateway.plugins.tools.mcp import McpServers, mcp_kind
from gateway.plugins.tools.metrics import ToolMetrics
from gateway.plugins.tools.python import ToolThreads, python_kind
from gateway.plugins.tools.registry import ToolRegistry


@hookimpl
def register_tools(tools: ToolRegistry, context: PluginContext) -> None:
    state = context.state
    settings = state.config.tools
    tools.metrics = ToolMetrics(state.metrics.registry)
    http = HttpClient(settings.http)
    mcp = McpServers(settings.mcp_servers, tools, tools.metrics)
    tools.register_kind("http", http_kind(http))
    tools.register_kind("python", python_kind(ToolThreads(settings.python_threads)))
    tools.register_kind("mcp", mcp_kind(mcp))
    tools.add_service(http)
    tools.add_service(mcp)


@hookimpl
async def startup(context: PluginContext) -> None:
    tools = context.state.tools
    for i, definition in enumerate(context.state.config.tools.registry):
        where = f"tools.registry[{i}] ({definition.id})"
        try:
            tools.add(tools.build(definition))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    await tools.start()


@hookimpl
async def shutdown(context: PluginContext) -> None:
    await context.state.tools.close()
