"""The tools plugin (entry point ``tools = gateway.plugins.tools.plugin:ToolsPlugin``).

One instance per gateway owns the tool registry. ``register_tools`` registers the executor
kinds (http, python, mcp) and the services they need; ``startup`` first lets every plugin's
``register_tools`` fill the registry, then builds the tools of ``tools.registry`` in
routing.yaml (so kinds from other plugins work there too), then opens the HTTP client and
connects the MCP servers, which list their tools into the same registry. ``forwarder_for``
puts the server-side agent loop in front of the gateway's forwarder for requests that name
server-side tools; ``register_routes`` mounts ``/v1/tools`` and ``/internal/tools``.
"""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Router
from litestar.di import Provide
from litestar.types import ControllerRouterHandler

from adapters.base import Operation
from gateway.config.schema import Config
from gateway.config.upstreams import Model
from gateway.errors import ConfigError
from gateway.identity import Identity
from gateway.plugins.context import Forwarding, PluginContext
from gateway.plugins.hookspecs import hookimpl
from gateway.plugins.tools import hookspecs as tools_hookspecs
from gateway.plugins.tools.agent import AgentForwarder, agent_forwarder
from gateway.plugins.tools.api import tool_controllers
from gateway.plugins.tools.http import HttpClient, http_kind
from gateway.plugins.tools.mcp import McpServers, mcp_kind
from gateway.plugins.tools.metrics import ToolMetrics
from gateway.plugins.tools.python import ToolThreads, python_kind
from gateway.plugins.tools.registry import ToolRegistry
from gateway.plugins.tools.settings import AgentLoop, section_problems, settings_of
from gateway.wire import ClientRequest

# The executor kinds this plugin registers itself (register_tools below).
OWN_KINDS = frozenset(("http", "python", "mcp"))
# Plugins shipped with turnout: none of them adds tool executor kinds.
BUILTIN_PLUGINS = frozenset(("memory", "tools"))


class ToolsPlugin:
    # Its own hook (register_tools), for other plugins to implement.
    turnout_hookspecs = tools_hookspecs

    def __init__(self) -> None:
        self.tools = ToolRegistry()
        # Set at startup: the loop's settings (read per request) and the gateway it runs in.
        self._agent: AgentLoop | None = None

    @hookimpl
    def check_config(self, config: Config) -> list[str]:
        return section_problems(config, settings_of(config))

    @hookimpl
    def check_startup(self, config: Config) -> list[str]:
        # The python tools of tools.registry import now, as startup would import them; the
        # other kinds reach out (HTTP, MCP servers) only when they run.
        static = ToolRegistry()
        static.register_kind("python", python_kind(ToolThreads(1)))
        # Another enabled plugin may add executor kinds at startup (register_tools); with none
        # but the built-ins, an executor outside this plugin's own kinds is refused here too.
        others = [name for name in config.plugins.enabled if name not in BUILTIN_PLUGINS]
        problems: list[str] = []
        for i, definition in enumerate(settings_of(config).registry):
            where = f"tools.registry[{i}] ({definition.id})"
            if definition.executor in static.kinds():
                try:
                    static.build(definition)
                except ValueError as exc:
                    problems.append(f"{where}: {exc}")
            elif definition.executor not in OWN_KINDS and not others:
                known = ", ".join(sorted(OWN_KINDS))
                problems.append(
                    f"{where}: unknown executor {definition.executor!r} (known: {known})"
                )
        return problems

    @hookimpl
    def register_routes(self) -> Sequence[ControllerRouterHandler]:
        tools = self.tools

        # A closure, not a bound method: Litestar deep-copies its handlers' dependencies, and
        # a copied method would carry a copy of this plugin.
        def registry() -> ToolRegistry:
            return tools

        provide = Provide(registry, use_cache=True, sync_to_thread=False)
        return [Router("/", route_handlers=tool_controllers(), dependencies={"tools": provide})]

    @hookimpl
    def register_tools(self, tools: ToolRegistry, context: PluginContext) -> None:
        settings = settings_of(context.state.config)
        tools.metrics = ToolMetrics(context.state.metrics.registry)
        http = HttpClient(settings.http)
        mcp = McpServers(settings.mcp_servers, tools, tools.metrics)
        tools.register_kind("http", http_kind(http))
        tools.register_kind("python", python_kind(ToolThreads(settings.python_threads)))
        tools.register_kind("mcp", mcp_kind(mcp))
        tools.add_service(http)
        tools.add_service(mcp)

    @hookimpl
    async def startup(self, context: PluginContext) -> None:
        settings = settings_of(context.state.config)
        context.collect("register_tools", tools=self.tools)
        tools = self.tools
        for i, definition in enumerate(settings.registry):
            where = f"tools.registry[{i}] ({definition.id})"
            try:
                tools.add(tools.build(definition))
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        await tools.start()
        self._agent = settings.agent

    @hookimpl
    async def shutdown(self) -> None:
        await self.tools.close()

    @hookimpl
    def forwarder_for(
        self,
        forwarder: Forwarding,
        identity: Identity,
        request_id: str,
        model: Model,
        request: ClientRequest,
    ) -> AgentForwarder | None:
        # A cheap None for every request while no tool is registered.
        agent = self._agent
        if agent is None or not self.tools or request.op is not Operation.CHAT:
            return None
        return agent_forwarder(forwarder, self.tools, agent, identity, request_id, model, request)
