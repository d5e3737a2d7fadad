"""The rate limiter the request path talks to: scopes, admission, refusals counted."""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.config.schema import RateLimits
from gateway.errors import ConfigError
from gateway.identity import Identity
from gateway.metrics import Metrics
from gateway.ratelimit.admission import Admission, Backend
from gateway.ratelimit.memory import MemoryBackend
from gateway.ratelimit.policy import Clock, Scope, limited, scopes_for

# ------------------------------------------------------------------------------- facade


class Limiter:
    """What the request path talks to: which limits apply, admit, and count the refusals.

    ``admission = await limiter.admit(limiter.scopes(identity, model), est_tokens)``; if
    ``admission.allowed`` is false answer 429 with ``admission.headers()`` and
    ``admission.message()``, else forward and ``await admission.release(actual_tokens)`` in a
    ``finally``. The request path tries ``admit_nowait`` and ``release_nowait`` first, which
    answer without a coroutine when the state is in this process.
    """

    _SCOPE_CACHE_SIZE = 10_000

    def __init__(
        self, config: RateLimits, backend: Backend, metrics: Metrics | None = None
    ) -> None:
        self._config = config
        self._backend = backend
        self._metrics = metrics
        # Nothing limited in routing.yaml: scopes() is two attribute checks for keys without
        # limits of their own, and admit() one branch returning a shared answer.
        self._enabled = bool(limited(config.default_key) or config.agents or config.models)
        self._unlimited = Admission((), 0, ())
        self._memory = backend if isinstance(backend, MemoryBackend) else None
        self._scopes: dict[tuple[object, ...], tuple[Scope, ...]] = {}

    @classmethod
    def from_config(
        cls, config: RateLimits, metrics: Metrics | None = None, clock: Clock = time.monotonic
    ) -> Limiter:
        backend_url = config.backend
        if backend_url == "memory":
            return cls(config, MemoryBackend(clock), metrics)
        if backend_url.startswith(("redis://", "rediss://", "unix://")):
            from gateway.ratelimit.redis import RedisBackend

            return cls(config, RedisBackend(backend_url, metrics=metrics, clock=clock), metrics)
        raise ConfigError(
            f"limits.backend: expected 'memory' or a redis:// URL, got {backend_url!r}"
        )

    def scopes(self, identity: Identity, model: str) -> tuple[Scope, ...]:
        """``model`` is the logical model's name as ``limits.models`` spells it."""
        if not self._enabled and identity.limits is None:
            return ()
        # The same callers come back all the time; working their scopes out costs ten times
        # this lookup. Bounded because agent ids come from callers.
        key = (identity.key_id, identity.is_admin, identity.limits, identity.agent_id, model)
        found = self._scopes.get(key)
        if found is None:
            if len(self._scopes) >= self._SCOPE_CACHE_SIZE:
                self._scopes.clear()
            found = self._scopes[key] = scopes_for(self._config, identity, model)
        return found

    async def admit(self, scopes: Sequence[Scope], est_tokens: int = 0) -> Admission:
        return self.admit_nowait(scopes, est_tokens) or self._counted(
            await self._backend.admit(scopes, est_tokens)
        )

    def admit_nowait(self, scopes: Sequence[Scope], est_tokens: int = 0) -> Admission | None:
        """``admit`` without awaiting, where the answer is in this process; else None.

        The request path tries this first: with the in-memory backend it saves a coroutine per
        request, and ``admit`` would decide exactly the same.
        """
        if not scopes:
            return self._unlimited
        if self._memory is None:
            return None
        return self._counted(self._memory.admit_now(scopes, est_tokens))

    def _counted(self, admission: Admission) -> Admission:
        if not admission.allowed and self._metrics is not None:
            scope = admission.scopes[admission.denied_at]
            m = self._metrics
            m.child(m.ratelimit_rejections, scope.kind, admission.denied_limit or "").inc()
        return admission

    async def start(self) -> None:
        await self._backend.start()

    async def close(self) -> None:
        await self._backend.close()
