"""The hooks a turnout plugin can implement (pluggy, like simonw/llm's ``register_*`` hooks).

Built-in plugins (memory, tools) implement these exactly as third-party ones do; plugins are
found through the ``turnout`` entry-point group and enabled by name in routing.yaml
(``plugins.enabled``). See ``gateway/plugins/manager.py`` for how they are loaded and called.

Two kinds of hooks:
- start-up: ``register_*`` add things to a registry, ``startup`` opens what the plugin
  needs; a plugin that raises here stops the gateway with a message naming it;
- per request: ``before_upstream`` may change the chat request (add context to the system
  prompt, say); ``after_response`` runs off the request path with what was answered. A
  plugin that raises or times out here never breaks a request: the error is logged and
  counted, and the request goes on without it.

Request hooks run in the order ``plugins.enabled`` lists the plugins (pluggy's ``tryfirst``
and ``trylast`` still apply). An implementation may take fewer arguments than the spec, and
may be a plain function: it then runs without a timeout (it cannot be interrupted anyway),
so keep it to quick CPU work.
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
    """Add upstream adapter kinds (``registry.register(kind, factory)``).

    Called when the gateway is built, before any provider's adapter is created, so a
    provider in routing.yaml can use the kind.
    """


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
    """Close what ``startup`` opened; flush pending writes. Runs after pending after_response."""


@hookspec
async def before_upstream(request: RequestContext) -> None:
    """Called once per chat request, after admission and before the first upstream attempt.

    May edit ``request.fields`` (``request.set_messages(...)``), and set
    ``request.capture_reply`` to get the answer's text in after_response.
    """


@hookspec
async def after_response(request: RequestContext, exchanged: Exchanged) -> None:
    """Called after the answer was sent, off the request path, for every request that went
    through before_upstream (whatever its status)."""
