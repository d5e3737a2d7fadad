"""The hook the memory plugin adds (``MemoryPlugin.turnout_hookspecs``): storage backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.plugins.hookspecs import hookspec

if TYPE_CHECKING:
    from gateway.plugins.context import PluginContext
    from gateway.plugins.memory.backends import MemoryBackends


@hookspec
def register_memory_backends(backends: MemoryBackends, context: PluginContext) -> None:
    """Add memory backends (``backends.add(name, factory)``); called when memory starts."""
