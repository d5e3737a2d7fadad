"""Where memories live: the backend protocol and the registry plugins add backends to.

The ``register_memory_backends`` hook receives a ``MemoryBackends``; the memory plugin adds
``sqlite-vec`` there exactly as a third-party plugin would add its own, and ``memory.backend``
in routing.yaml picks one by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.errors import ConfigError
from gateway.plugins.memory.items import Hit, MemoryItem, NewItem, Scope

if TYPE_CHECKING:
    # numpy only for type checking: this module is imported with the gateway's state, also
    # where the memory extra (numpy among it) is not installed.
    import numpy as np
    import numpy.typing as npt

    from gateway.plugins.memory.settings import Memory

    # Unit-length float32 vectors: one row per item.
    Vectors = npt.NDArray[np.float32]


class MemoryBackend(Protocol):
    """One store of items and their vectors, opened once per gateway."""

    async def open(self, embedder: str, dims: int | None) -> None:
        """Open or create the store. ``embedder`` names what made the vectors; a store built
        with another embedder must refuse to open (its vectors would not be comparable).
        ``dims`` is None when the embedder learns its size from its first answer."""

    async def close(self) -> None: ...

    async def add(self, items: Sequence[NewItem], vectors: Vectors) -> list[int]:
        """Store items with their vectors; returns their ids, in order."""

    async def nearest(self, vector: Vectors, scope: Scope, limit: int) -> list[Hit]:
        """The items in scope most similar (cosine) to ``vector``, best first: at least
        ``limit`` of them when the scope holds that many; ``score`` is the similarity."""

    async def recent(self, scope: Scope, limit: int) -> list[MemoryItem]:
        """The newest items in scope, newest first."""

    async def get(self, ids: Sequence[int]) -> list[MemoryItem]: ...

    async def delete(self, scope: Scope, ids: Sequence[int] = ()) -> int:
        """Delete the items in scope (only those of ``ids`` when given); returns how many."""

    async def count(self, scope: Scope) -> int: ...


BackendFactory = Callable[["Memory", str], MemoryBackend]


class MemoryBackends:
    """Backend kinds by name: ``add(name, factory)``, then ``create(name, settings, database)``."""

    def __init__(self) -> None:
        self._factories: dict[str, BackendFactory] = {}

    def add(self, name: str, factory: BackendFactory) -> None:
        if name in self._factories:
            raise ValueError(f"memory backend {name!r} is registered twice")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def problem(self, name: str) -> str:
        """Why ``memory.backend: name`` cannot be created here, or ""."""
        if name in self._factories:
            return ""
        known = ", ".join(self.names()) or "none registered"
        return f"memory.backend: unknown backend {name!r} (known: {known})"

    def create(self, name: str, settings: Memory, database: str) -> MemoryBackend:
        factory = self._factories.get(name)
        if factory is None:
            raise ConfigError(self.problem(name))
        return factory(settings, database)
