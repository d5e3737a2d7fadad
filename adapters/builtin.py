"""The adapter kinds that ship with turnout: the one place that lists them.

Each module registers its kinds exactly as a plugin's ``register_adapters`` hook would, so a
new provider kind is one new module plus one line here (or one plugin hook, outside turnout).
"""

from __future__ import annotations

from adapters import anthropic, llamacpp, mlx, ollama, openai_compat
from adapters.base import AdapterRegistry

BUILTIN = (openai_compat, llamacpp, mlx, ollama, anthropic)


def default_registry() -> AdapterRegistry:
    """A registry holding every adapter that ships with turnout."""
    registry = AdapterRegistry()
    for module in BUILTIN:
        module.register(registry)
    return registry
