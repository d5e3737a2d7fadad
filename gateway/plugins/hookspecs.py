"""The hooks a turnout plugin can implement (pluggy, like simonw/llm's ``register_*`` hooks).

Built-in plugins (memory, tools) implement these exactly as third-party ones do; plugins are
found through the ``turnout`` entry-point group and enabled by name in routing.yaml
(``plugins.enabled``). See ``gateway/plugins/manager.py`` for how they are loaded and called.

Two kinds of hooks:
- start-up: ``register_*`` add things to a registry (``register_routes`` its HTTP API),
  ``startup`` opens what the plugin needs; a plugin that raises here stops the gateway with a
  message naming it;
- per request: ``before_upstream`` may change the chat request (add context to the system
  prompt, say); ``forwarder_for`` may answer it another way; ``after_response`` runs off the request path with what was answered. A
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
    from collections.abc import Callable, Sequence

    from litestar.types import ControllerRouterHandler

    from adapters.base import AdapterRegistry
    from gateway.config.schema import Config
    from gateway.config.upstreams import Model
    from gateway.engines.kinds import EngineKinds
    from gateway.identity import Identity
    from gateway.plugins.context import (
        Exchanged,
        Forwarding,
        PluginContext,
        RequestContext,
        RoutesContext,
    )
    from gateway.wire import ClientRequest

hookspec = pluggy.HookspecMarker("turnout")
hookimpl = pluggy.HookimplMarker("turnout")


@hookspec
def register_adapters(registry: AdapterRegistry) -> None:
    """Add upstream adapter kinds (``registry.register(kind, factory)``).

    Called when the gateway is built, before any provider's adapter is created, so a
    provider in routing.yaml can use the kind.
    """


@hookspec
def check_config(config: Config) -> Sequence[str]:
    """Problems in the plugin's own top-level section of routing.yaml, each naming its key path.

    The section named like the plugin (``tools:`` for ``tools``) is kept raw by the config
    loader (``config.sections``) and decoded by the plugin (``gateway.config.section``); a
    section that does not decode raises ConfigError. Called while routing.yaml loads (and by
    ``turnout check``), on the installed plugin, enabled or not.
    """
    return ()


@hookspec
def check_startup(config: Config, collect: Callable[..., bool]) -> Sequence[str]:
    """What would stop this enabled plugin's ``startup``, found without opening anything: a
    dependency that is not installed, a file that does not exist. Each problem names its key
    path. ``turnout serve`` refuses to start with any, and ``turnout check`` reports them, so
    the two agree; ``startup`` still raises if one slips through.

    ``collect(hook, **kwargs)`` runs a ``register_*`` hook over every plugin, as
    ``PluginContext.collect`` does at start, but without a running gateway: implementations that
    ask for ``context`` are left out, and it answers False when one was (the registry may then
    lack what that plugin adds, so a name missing from it proves nothing).
    """
    return ()


@hookspec
def register_routes(context: RoutesContext) -> Sequence[ControllerRouterHandler]:
    """The plugin's HTTP API: controllers or routers, mounted when the app is built.

    Called before the gateway starts (``context.state`` is what it is built from, with no
    forwarder yet), so a handler must reach what ``startup`` opens through the plugin (a
    Litestar dependency it provides, say), not at registration time.
    """
    return ()


@hookspec
def register_engine_kinds(kinds: EngineKinds) -> None:
    """Add local engine kinds (``kinds.register(EngineKind(...))``, see gateway/engines/kinds.py).

    Called when the config is loaded (only if a role names a kind no built-in provides) and
    when the gateway is built; roles in routing.yaml may then name the kind in ``engine``.
    """


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
def forwarder_for(
    forwarder: Forwarding,
    identity: Identity,
    request_id: str,
    model: Model,
    request: ClientRequest,
) -> Forwarding | None:
    """Who answers one request: ``None`` leaves it to ``forwarder`` (the gateway's own).

    Called per request after ``before_upstream``, only when some plugin implements it. A
    plugin that answers differently (the tools plugin's server-side agent loop) returns a
    stand-in shaped like the forwarder, usually wrapping it. The first plugin that returns
    one answers; a refusal it raises (a ``GatewayError``) goes to the client as is.
    """


@hookspec
async def after_response(request: RequestContext, exchanged: Exchanged) -> None:
    """Called after the answer was sent, off the request path, for every request that went
    through before_upstream (whatever its status)."""
