"""Litestar as the gateway runs it: without the pydantic plugins Litestar adds by default.

Litestar adds its pydantic plugins whenever pydantic is installed (the ``mcp`` SDK brings it),
and importing them took 65-85 ms of ``turnout serve``'s ~0.8 s start-up on the 2-core bench
machine (issue 13: ready in <= 1 s). Nothing the gateway mounts takes or returns a pydantic
model: wire types are msgspec Structs, and the mcp SDK's pydantic models stay inside the tools
plugin. A plugin route that declared a pydantic model would fail to decode it; declare a
msgspec Struct, a dataclass or a TypedDict instead.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.plugins import PluginProtocol


class GatewayApp(Litestar):
    @staticmethod
    def _get_default_plugins(plugins: list[PluginProtocol]) -> list[PluginProtocol]:
        # Litestar's own list (litestar/app.py, 2.x) less pydantic's: msgspec's DI plugin, and
        # attrs' schema plugin (attrs comes with aiohttp anyway; importing it costs ~1 ms).
        from litestar.plugins.attrs import AttrsSchemaPlugin
        from litestar.plugins.core import MsgspecDIPlugin

        plugins.append(MsgspecDIPlugin())
        if not any(isinstance(plugin, AttrsSchemaPlugin) for plugin in plugins):
            plugins.append(AttrsSchemaPlugin())
        return plugins
