"""The hook the tools plugin adds (``ToolsPlugin.turnout_hookspecs``): other plugins' tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.plugins.hookspecs import hookspec

if TYPE_CHECKING:
    from gateway.plugins.context import PluginContext
    from gateway.plugins.tools.registry import ToolRegistry


@hookspec
def register_tools(tools: ToolRegistry, context: PluginContext) -> None:
    """Add tools (``tools.add(tool)``) or executor kinds; called when the tools plugin starts."""
