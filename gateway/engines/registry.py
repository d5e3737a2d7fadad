"""Which engine kinds a config can use: the built-in ones plus those its plugins register."""

from __future__ import annotations

from gateway.config.schema import Config
from gateway.engines.builtin import builtin_kinds, collect
from gateway.engines.kinds import EngineKinds
from gateway.plugins.manager import load_enabled


def kinds_for(config: Config) -> EngineKinds:
    """The kinds ``config``'s roles may name.

    ``plugins.enabled`` is read only when a role names a kind no built-in provides: a config
    of built-in kinds loads without importing any plugin (the gateway loads them later, and a
    plugin that fails to load is reported there, naming it).
    """
    kinds = builtin_kinds()
    if all(role.engine in kinds for role in config.roles.values()) or not config.plugins.enabled:
        return kinds
    return collect(load_enabled(config.plugins.enabled))
