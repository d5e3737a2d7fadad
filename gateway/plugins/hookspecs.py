"""The hooks a turnout plugin can implement (pluggy, like simonw/llm's ``register_*`` hooks).

Built-in plugins (memory, tools) implement these exactly as third-party ones do; third-party
plugins are found through the ``turnout`` entry-point group and enabled by name in
routing.yaml (``plugins.enabled``).

Two kinds of hooks:
- ``register_*``: called once at start-up with a registry to add things to;
- request hooks: called per request. ``before_upstream`` may change the chat request (add
  context to the system prompt, say); ``after_response`` runs off the request path with what
  was answered. A plugin that raises never breaks a request: the error is logged and counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from adapters.base import AdapterRegistry
    from gateway.plugins.context import Exchanged, PluginContext, RequestContext
    from gateway.plugins.memory.backends import MemoryBackends
    from gateway.plugins.tools.registry import ToolRegistry

hookspec = pluggy.HookspecMarker("turnout")
hookimpl = pluggy.HookimplMarker("turnout")


@hookspec
def register_adapters(registry: AdapterRegistry) -> None:
    """Add upstream adapter kinds (``registry.register(kind, factory)``)."""


@hookspec
def register_tools(tools: ToolRegistry, context: PluginContext) -> None:
    """Add tools (``tools.add(tool)``)."""


@hookspec
def register_memory_backends(backends: MemoryBackends, context: PluginContext) -> None:
    """Add memory backends (``backends.add(name, factory)``)."""


@hookspec
async def startup(context: PluginContext) -> None:
    """Open what the plugin needs (connections, models) once the gateway starts."""


@hookspec
async def shutdown(context: PluginContext) -> None:
    """Close what ``startup`` opened; flush pending writes."""


@hookspec
async def before_upstream(request: RequestContext) -> None:
    """Called before the request goes to an upstream; may edit ``request.messages`` etc."""


@hookspec
async def after_response(request: RequestContext, exchanged: Exchanged) -> None:
    """Called after the answer was sent, off the request path."""

