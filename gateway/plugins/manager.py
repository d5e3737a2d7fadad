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

from gateway.config import Config, ConfigError
from gateway.config import Plugins as PluginsConfig
from gateway.metrics import Metrics
from gateway.plugins import hookspecs
from gateway.plugins.context import Exchanged, PluginContext, RequestContext
from gateway.prompts import PromptLayers

if TYPE_CHECKING:
    from adapters.base import AdapterRegistry
    from gateway.plugins.memory.backends import MemoryBackends
    from gateway.plugins.tools.registry import ToolRegistry
    from gateway.state import GatewayState

log = logging.getLogger("turnout.plugins")

GROUP = "turnout"


class PluginError(ConfigError):
    """A plugin cannot be loaded, or failed while the gateway started."""


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
        # The request path checks only this: with no request hooks it costs one attribute read.
        self.active = bool(self._before or self._after)
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics) -> PluginManager:
        """Entry-point plugins from ``plugins.enabled``, plus the prompt layers if configured."""
        plugins = load_enabled(config.plugins.enabled)
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

    def register_tools(self, tools: ToolRegistry, state: GatewayState) -> None:
        self._call_all("register_tools", {"tools": tools}, state)

    def memory_backends(self, state: GatewayState) -> MemoryBackends | None:
        """The memory backends plugins register; None when no plugin registers any.

        Imported only then: the registry needs numpy, which a gateway without memory does not.
        """
        if not self._impls("register_memory_backends"):
            return None
        from gateway.plugins.memory.backends import MemoryBackends

        backends = MemoryBackends()
        self._call_all("register_memory_backends", {"backends": backends}, state)
        return backends

    async def start(self, state: GatewayState) -> None:
        names = [name for name, _ in self._pm.list_name_plugin()]
        if names:
            log.info("plugins: %s", ", ".join(sorted(names)))
        for impl in self._impls("startup"):
            try:
                await _invoke(impl, {"context": self._context(impl.plugin, state)})
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin!r} failed to start: {exc!r}") from exc

    def _call_all(
        self, hook: str, kwargs: dict[str, Any], state: GatewayState | None = None
    ) -> None:
        for impl in self._impls(hook):
            if state is not None:
                kwargs["context"] = self._context(impl.plugin, state)
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin!r} failed in {hook}: {exc!r}") from exc

    def _context(self, name: str, state: GatewayState) -> PluginContext:
        return PluginContext(state, dict(self._config.settings.get(name, {})))

    # --- per request: isolated -------------------------------------------------------------

    async def before_upstream(self, request: RequestContext) -> None:
        """Every plugin's before_upstream, in order; one that fails is skipped, not fatal."""
        kwargs = {"request": request}
        timeout = self._config.before_upstream_timeout_seconds
        for impl in self._before:
            await self._isolated(impl, "before_upstream", kwargs, timeout)

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

    async def stop(self, state: GatewayState) -> None:
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
