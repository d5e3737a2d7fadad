"""Who a request comes from: the key it carried, the agent it speaks for, the project and channel."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.schema import Limits


@dataclass(frozen=True, slots=True)
class Identity:
    # Virtual key id (not the secret); None for keyless local callers in embedded mode.
    key_id: str | None
    agent_id: str
    project: str | None = None
    channel: str | None = None
    is_admin: bool = False
    # The key's own limits (None: the configured default for keys).
    limits: Limits | None = None
    # Logical model names or globs this caller may use; empty means all.
    allowed_models: tuple[str, ...] = ()
    # May this caller speak for other agents (X-Agent-Id, metadata.agent_id)?
    trusted: bool = False


ANONYMOUS = Identity(key_id=None, agent_id="anonymous")
