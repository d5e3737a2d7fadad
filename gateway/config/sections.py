"""Top-level sections that belong to plugins (``tools:``, ``memory:``): kept raw on load,
checked by their plugin's ``check_config``, decoded by the plugin itself (``section``).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, TypeVar

import msgspec

from gateway.config.keypath import readable
from gateway.config.schema import Config
from gateway.errors import ConfigError

# The entry-point group plugins are found in (gateway/plugins/manager.py loads them).
_PLUGINS = "turnout"


def plugin_sections(
    raw: dict[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, msgspec.Raw]]:
    """Splits off the top-level sections that belong to installed plugins, kept raw.

    A section belongs to the plugin of its name (``tools:`` to the tools plugin); any other
    key the gateway does not know is refused, as a typo.
    """
    unknown = [k for k in raw if k not in Config.__struct_fields__]
    if not unknown:
        return raw, {}
    installed = {entry.name for entry in entry_points(group=_PLUGINS)}
    for key in unknown:
        if key not in installed:
            raise ConfigError(f"{source}: (top level): unknown key `{key}`")
    known = {k: v for k, v in raw.items() if k not in unknown}
    return known, {k: msgspec.Raw(msgspec.json.encode(raw[k])) for k in unknown}


def section_problems(config: Config) -> list[str]:
    """Each plugin section checked by its plugin's ``check_config`` (imported for that only)."""
    if not config.sections:
        return []
    problems: list[str] = []
    entries = {e.name: e for e in entry_points(group=_PLUGINS) if e.name in config.sections}
    for name in config.sections:
        entry = entries[name]
        try:
            target = entry.load()
        except Exception as exc:
            # A plugin left off need not import (memory without its extra): nothing reads
            # its section then. One that is enabled would stop the gateway: say so now.
            if name in config.plugins.enabled:
                problems.append(f"{name}: plugin {name!r} ({entry.value}) failed to load: {exc!r}")
            continue
        plugin = target() if isinstance(target, type) else target
        check = getattr(plugin, "check_config", None)
        if check is not None:
            problems.extend(check(config))
    return problems


T = TypeVar("T")


def section(config: Config, name: str, kind: type[T]) -> T:
    """A plugin's own section, decoded as ``kind``; its defaults when routing.yaml has none.

    A section that does not fit raises a ConfigError naming the key path (``tools.registry[0]``).
    """
    raw = config.sections.get(name)
    if raw is None:
        return kind()
    try:
        return msgspec.json.decode(raw, type=kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(readable(str(exc), name)) from None
