"""Where routing meets the supervisor: a request for a local role waits here for its engine.

The forwarder calls ``enter`` before it talks to a role's engine and releases the lease when the
answer is complete (for streams: when the stream ends), so the supervisor knows exactly which
requests are in flight and never swaps an engine out from under one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.config.engines import Role
from gateway.config.roles import ROLE_PREFIX, role_provider_name, role_upstream_model
from gateway.config.upstreams import Target
from gateway.engines.policy import pick_fallback
from gateway.engines.supervisor import Lease, Supervisor
from gateway.tokens import context_need
from gateway.wire import ClientRequest


class Waiting(Protocol):
    """Where the gate notes the role a request is queued for (the forwarder's ``Trace``), and
    whose request it is (for ``engines.agent_priority``)."""

    engine_role: str
    agent: str


class EngineGate:
    def __init__(self, supervisor: Supervisor, roles: Mapping[str, Role]) -> None:
        self._supervisor = supervisor
        self._roles = roles

    @staticmethod
    def handles(target: Target) -> bool:
        return target.provider.startswith(ROLE_PREFIX)

    async def enter(
        self, target: Target, request: ClientRequest, waiting: Waiting
    ) -> tuple[Lease, Target]:
        role = target.provider[len(ROLE_PREFIX) :]
        chosen, note = self._by_context(role, request)
        waiting.engine_role = chosen
        try:
            lease = await self._supervisor.acquire(
                chosen, requested=role, note=note, agent=waiting.agent
            )
        finally:
            waiting.engine_role = ""
        if lease.role == role:
            return lease, target
        other = self._roles[lease.role]
        return lease, Target(
            provider=role_provider_name(lease.role), model=role_upstream_model(lease.role, other)
        )

    def release(self, lease: Lease) -> None:
        self._supervisor.release(lease)

    def _by_context(self, role: str, request: ClientRequest) -> tuple[str, str]:
        """A conversation longer than the role's context goes to a fallback role that can hold it."""
        need = context_need(_prompt_bytes(request), request.max_tokens() or 0)
        context = self._roles[role].context
        if need <= context:
            return role, ""
        fallback = pick_fallback(role, self._roles, lambda r: self._roles[r].context >= need)
        if fallback is None:
            # Nothing larger: let the engine judge the real token count.
            return role, ""
        return (
            fallback,
            f"request needs ~{need} tokens, more than role {role}'s context of {context}; served by {fallback}",
        )


def _prompt_bytes(request: ClientRequest) -> int:
    fields = request.fields
    raw = fields.get("messages") or fields.get("prompt") or fields.get("input")
    return len(raw) if raw is not None else 0
