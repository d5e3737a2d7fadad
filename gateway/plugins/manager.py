"""Loads plugins and calls their hooks: registrations at start-up, request hooks isolated.

Plugins are named in ``plugins.enabled`` and found in the ``turnout`` entry-point group, the
built-in ones (memory, tools) exactly like third-party ones. An entry point names a module of
hook functions or a class; a class is instantiated once per gateway, so two gateways in one
process never share a plugin's state.

Start-up is strict: an unknown name, a plugin that does not import, or one that raises in a
``register_*`` or ``startup`` hook stops the gateway with a message naming it. Requests are
not: a plugin that raises or takes too long in a request hook is logged and counted
(``turnout_plugin_errors_total{plugin,hook}``) and the request goes on without it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import pluggy
from prometheus_client import Counter

from gateway.config.schema import Config
from gateway.config.schema import Plugins as PluginsConfig
from gateway.engines import builtin as builtin_engines
from gateway.errors import PluginError
from gateway.metrics import Metrics
from gateway.plugins import hookspecs
from gateway.plugins.context import (
    Exchanged,
    Forwarding,
    Gateway,
    PluginContext,
    RequestContext,
    RoutesContext,
    Setup,
)
from gateway.prompts import PromptLayers

if TYPE_CHECKING:
    from litestar.types import ControllerRouterHandler

    from adapters.base import AdapterRegistry
    from gateway.config.upstreams import Model
    from gateway.engines.kinds import EngineKinds
    from gateway.identity import Identity
    from gateway.wire import ClientRequest

log = logging.getLogger("turnout.plugins")

GROUP = "turnout"


@dataclass(frozen=True, slots=True)
class _Impl:
    """One plugin's implementation of one hook, with the arguments it asks for."""

    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]


def available() -> dict[str, EntryPoint]:
    """Installed plugins by name."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=GROUP):
        seen = found.get(entry.name)
        if seen is not None and seen.value != entry.value:
            raise PluginError(
                f"plugin name {entry.name!r} is claimed twice: {seen.value} and {entry.value}"
            )
        found[entry.name] = entry
    return found


def load_enabled(names: Sequence[str]) -> list[tuple[str, object]]:
    """The plugins ``plugins.enabled`` names, imported (classes instantiated), in that order."""
    installed = available()
    unknown = [n for n in names if n not in installed]
    if unknown:
        known = ", ".join(sorted(installed)) or "none installed"
        raise PluginError(
            f"plugins.enabled: unknown plugin {', '.join(map(repr, unknown))} "
            f"(known: {known}); plugins are found in the {GROUP!r} entry-point group of installed "
            "packages: install the plugin's package (or reinstall turnout for its own)"
        )
    return [(name, _instantiate(name, installed[name])) for name in names]


def _instantiate(name: str, entry: EntryPoint) -> object:
    try:
        target = entry.load()
        return target() if isinstance(target, type) else target
    except Exception as exc:
        raise PluginError(f"plugin {name!r} ({entry.value}) failed to load: {exc!r}") from exc


class PluginManager:
    def __init__(
        self, plugins: Sequence[tuple[str, object]], config: PluginsConfig, metrics: Metrics
    ) -> None:
        self._config = config
        self._metrics = metrics
        self.errors = Counter(
            "turnout_plugin_errors",
            "Plugin hooks that raised or timed out, by plugin and hook; the request went on.",
            ("plugin", "hook"),
            registry=metrics.registry,
        )
        self._pm = pluggy.PluginManager(GROUP)
        self._pm.add_hookspecs(hookspecs)
        # A plugin may bring hooks of its own for others to implement (the tools plugin's
        # register_tools): added before any plugin registers, so their implementations check.
        for _, plugin in plugins:
            specs = getattr(plugin, "turnout_hookspecs", None)
            if specs is not None:
                self._pm.add_hookspecs(specs)
        # pluggy calls the last registered plugin first: registering in reverse makes hooks
        # run in the order plugins are listed (the prompt layers, tryfirst, go before all).
        for name, plugin in reversed(plugins):
            self._register(name, plugin)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {self._pm.get_name(exc.plugin)!r}: {exc}") from None
        self._before = self._impls("before_upstream")
        self._after = self._impls("after_response")
        self._forwarders = self._impls("forwarder_for")
        # The request path checks only these: with no request hooks each costs one attribute read.
        self.active = bool(self._before or self._after)
        self.wraps_forwarder = bool(self._forwarders)
        self._pending: set[asyncio.Task[None]] = set()
        self._installed_names: frozenset[str] | None = None

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics) -> PluginManager:
        """Entry-point plugins from ``plugins.enabled``, plus the prompt layers if configured."""
        # The built-in engine kinds register through the same hook as a plugin's.
        plugins = [*builtin_engines.builtin_plugins(), *load_enabled(config.plugins.enabled)]
        prompts = PromptLayers.from_config(config.prompts)
        if prompts is not None:
            plugins.append(("prompts", prompts))
        return cls(plugins, config.plugins, metrics)

    def _register(self, name: str, plugin: object) -> None:
        try:
            self._pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin {name!r}: {exc}") from None

    def _impls(self, hook: str) -> list[_Impl]:
        caller: pluggy.HookCaller = getattr(self._pm.hook, hook)
        # get_hookimpls() lists them in reverse call order (tryfirst last).
        return [
            _Impl(impl.plugin_name, impl.function, tuple(impl.argnames))
            for impl in reversed(caller.get_hookimpls())
        ]

    def get(self, name: str) -> object | None:
        """A loaded plugin (module or instance) by name."""
        plugin: object | None = self._pm.get_plugin(name)
        return plugin

    # --- start-up: strict ------------------------------------------------------------------

    def register_adapters(self, registry: AdapterRegistry) -> None:
        """Before any provider's adapter is created, so plugin kinds are usable in providers."""
        self._call_all("register_adapters", {"registry": registry})

    def register_engine_kinds(self, kinds: EngineKinds) -> None:
        """Before roles' providers and drivers are built, so plugin kinds are usable in roles."""
        self._call_all("register_engine_kinds", {"kinds": kinds})

    def startup_problems(self, config: Config) -> list[str]:
        """What would stop the enabled plugins' ``startup`` (``check_startup``), found now."""
        problems: list[str] = []
        kwargs = {"config": config, "collect": self._collect_offline}
        for impl in self._impls("check_startup"):
            try:
                problems.extend(impl.function(*[kwargs[a] for a in impl.argnames]))
            except Exception as exc:
                problems.append(f"plugin {impl.plugin!r} failed in check_startup: {exc!r}")
        return problems

    def _collect_offline(self, hook: str, **kwargs: Any) -> bool:
        """A ``register_*`` hook run for ``check_startup``, with no gateway to hand as
        ``context``: implementations that need one are skipped, and then this answers False."""
        complete = True
        for impl in self._impls(hook):
            if "context" in impl.argnames:
                complete = False
                continue
            impl.function(*[kwargs[a] for a in impl.argnames])
        return complete

    def routes(self, setup: Setup) -> list[ControllerRouterHandler]:
        """Every plugin's HTTP API (``register_routes``), for the app to mount."""
        routes: list[ControllerRouterHandler] = []
        for impl in self._impls("register_routes"):
            settings = dict(self._config.settings.get(impl.plugin, {}))
            kwargs = {"context": RoutesContext(setup, settings)}
            try:
                routes.extend(impl.function(*[kwargs[a] for a in impl.argnames]) or ())
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin!r} failed in register_routes: {exc!r}"
                ) from exc
        return routes

    def disabled_route_owner(self, path: str) -> str | None:
        """The installed, not enabled plugin whose API ``path`` is under, if any.

        Plugins mount their API under ``/v1/<name>`` or ``/internal/<name>``; only their names
        are read (nothing is imported), so this costs nothing to plugins never enabled.
        """
        parts = path.split("/", 3)
        if len(parts) < 3 or parts[1] not in ("v1", "internal"):
            return None
        name = parts[2]
        if self._pm.has_plugin(name) or name not in self._installed():
            return None
        return name

    def _installed(self) -> frozenset[str]:
        # Read once: scanning the entry points costs milliseconds, and 404s come in floods.
        if self._installed_names is None:
            try:
                self._installed_names = frozenset(available())
            except PluginError:
                self._installed_names = frozenset()
        return self._installed_names

    def collect(self, hook: str, state: Gateway, **kwargs: Any) -> None:
        """Runs a ``register_*`` hook over every plugin: the plugin that owns the registry
        calls this (through its context's ``collect``) with the registry to fill."""
        self._call_all(hook, kwargs, state)

    async def start(self, state: Gateway) -> None:
        names = [name for name, _ in self._pm.list_name_plugin()]
        if names:
            log.info("plugins: %s", ", ".join(sorted(names)))
        for impl in self._impls("startup"):
            try:
                await _invoke(impl, {"context": self._context(impl.plugin, state)})
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin!r} failed to start: {exc!r}") from exc

    def _call_all(self, hook: str, kwargs: dict[str, Any], state: Gateway | None = None) -> None:
        for impl in self._impls(hook):
            if state is not None:
                kwargs["context"] = self._context(impl.plugin, state)
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin!r} failed in {hook}: {exc!r}") from exc

    def _context(self, name: str, state: Gateway) -> PluginContext:
        def collect(hook: str, **kwargs: Any) -> None:
            self.collect(hook, state, **kwargs)

        return PluginContext(state, dict(self._config.settings.get(name, {})), collect)

    # --- per request: isolated -------------------------------------------------------------

    async def before_upstream(self, request: RequestContext) -> None:
        """Every plugin's before_upstream, in order; one that fails is skipped, not fatal."""
        kwargs = {"request": request}
        timeout = self._config.before_upstream_timeout_seconds
        for impl in self._before:
            await self._isolated(impl, "before_upstream", kwargs, timeout)

    def forwarder_for(
        self,
        forwarder: Forwarding,
        identity: Identity,
        request_id: str,
        model: Model,
        request: ClientRequest,
    ) -> Forwarding | None:
        """The first plugin's stand-in for ``forwarder`` on this request, or None.

        Not isolated like the other request hooks: a refusal a plugin raises here (a tool
        the caller may not use) is the client's answer.
        """
        kwargs = {
            "forwarder": forwarder,
            "identity": identity,
            "request_id": request_id,
            "model": model,
            "request": request,
        }
        for impl in self._forwarders:
            stand_in: Forwarding | None = impl.function(*[kwargs[a] for a in impl.argnames])
            if stand_in is not None:
                return stand_in
        return None

    def after_response(self, request: RequestContext, exchanged: Exchanged) -> None:
        """Schedules after_response off the request path; the task is awaited at shutdown."""
        if not self._after:
            return
        task = asyncio.get_running_loop().create_task(self._after_all(request, exchanged))
        # The set holds a strong reference: the loop keeps only weak ones to its tasks.
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _after_all(self, request: RequestContext, exchanged: Exchanged) -> None:
        kwargs = {"request": request, "exchanged": exchanged}
        timeout = self._config.after_response_timeout_seconds
        for impl in self._after:
            await self._isolated(impl, "after_response", kwargs, timeout)

    async def _isolated(
        self, impl: _Impl, hook: str, kwargs: Mapping[str, Any], seconds: float
    ) -> None:
        try:
            result = impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception as exc:
            self._failed(impl.plugin, hook, repr(exc), exc)
            return
        if not inspect.isawaitable(result):
            # A synchronous hook has already run: nothing to time (arming a timer costs
            # microseconds per request, which the built-in prompt layers need not pay).
            return
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                await result
        except TimeoutError as exc:
            if deadline.expired():
                self._failed(impl.plugin, hook, f"took longer than {seconds:g}s", None)
            else:
                self._failed(impl.plugin, hook, repr(exc), exc)
        except Exception as exc:
            self._failed(impl.plugin, hook, repr(exc), exc)
        # CancelledError (the client left, or shutdown) is not the plugin's failure: it goes on.

    def _failed(self, plugin: str, hook: str, why: str, exc: BaseException | None) -> None:
        self._metrics.child(self.errors, plugin, hook).inc()
        log.error("plugin %s failed in %s: %s", plugin, hook, why, exc_info=exc)

    # --- shutdown --------------------------------------------------------------------------

    async def stop(self, state: Gateway) -> None:
        """Lets after_response work finish (within the grace period), then shuts plugins down."""
        if self._pending:
            grace = self._config.shutdown_grace_seconds
            _, late = await asyncio.wait(set(self._pending), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "cancelled %d after_response task(s) still running at shutdown", len(late)
                )
                await asyncio.gather(*late, return_exceptions=True)
        for impl in self._impls("shutdown"):
            try:
                await _invoke(impl, {"context": self._context(impl.plugin, state)})
            except Exception as exc:
                self._failed(impl.plugin, "shutdown", repr(exc), exc)


async def _invoke(impl: _Impl, kwargs: Mapping[str, Any]) -> None:
    """Calls a hook function with the arguments it names; awaits it when it is async."""
    result = impl.function(*[kwargs[a] for a in impl.argnames])
    if inspect.isawaitable(result):
        await result
