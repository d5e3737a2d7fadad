"""The peers as the forwarder and ``/engine/status`` see them.

The forwarder asks two things, both only when peers are configured: the order of a model's
targets for one request (``order``), and whether a peer's failure ends the request
(``stops``). Both read what the watchers last saw; neither waits for a peer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from gateway.config.peers import PEER_PREFIX, Failures, Peer
from gateway.config.roles import ROLE_PREFIX
from gateway.config.upstreams import Model, Target
from gateway.engines.supervisor import Supervisor
from gateway.errors import UpstreamError
from gateway.peers.policy import Rank, RoleView, action, is_peer, order, rank, without_peers
from gateway.peers.watcher import PeerWatcher
from gateway.router import TargetView, target_key

# A local role's state and queue depth (the supervisor's), None when it is not a local role.
LocalView = Callable[[str], RoleView | None]


class Fleet:
    def __init__(
        self,
        peers: Mapping[str, Peer],
        models: Sequence[Model],
        book: Mapping[str, TargetView],
        local: LocalView,
    ) -> None:
        self.watchers = {name: PeerWatcher(name, peer) for name, peer in peers.items()}
        self._by_provider = {PEER_PREFIX + name: w for name, w in self.watchers.items()}
        self._failures: dict[str, Failures] = {
            provider: w.peer.failures for provider, w in self._by_provider.items()
        }
        # Models with a copy on some peer: every other model skips the fleet in one lookup.
        self._peered = frozenset(m.name for m in models if any(is_peer(t) for t in m.targets))
        self._book = book
        self._local = local
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for watcher in self.watchers.values():
            watcher.start(self._session)

    async def close(self) -> None:
        for watcher in self.watchers.values():
            await watcher.stop()
        if self._session is not None:
            await self._session.close()

    def order(self, model: Model, targets: list[Target], hopped: bool, now: float) -> list[Target]:
        if model.name not in self._peered:
            return targets
        if hopped:
            return without_peers(targets)
        ranks: dict[str, Rank] = {}
        for target in targets:
            key = target_key(target)
            watcher = self._by_provider.get(target.provider)
            if watcher is not None:
                view, remote = watcher.view(target.model), True
            elif target.provider.startswith(ROLE_PREFIX):
                view, remote = self._local(target.provider[len(ROLE_PREFIX) :]), False
            else:
                continue
            cooling = key in self._book and self._book[key].cooling_until > now
            ranks[key] = rank(view, remote, cooling)
        return order(targets, ranks)

    def stops(self, target: Target, error: UpstreamError) -> bool:
        """Whether this peer's failures.<class> says to answer the client with ``error`` now."""
        failures = self._failures.get(target.provider)
        return failures is not None and action(failures, error) == "fail"

    def describe(self) -> dict[str, Any]:
        return {name: w.describe() for name, w in sorted(self.watchers.items())}

    async def refresh(self) -> None:
        """Read every peer's status now (tests, and a start that should not wait a poll)."""
        if self._session is not None:
            for watcher in self.watchers.values():
                await watcher.refresh(self._session)


def supervisor_view(supervisor: Supervisor | None) -> LocalView:
    """A ``LocalView`` over the supervisor's states and queue depths."""

    def view(role: str) -> RoleView | None:
        if supervisor is None or role not in supervisor.roles:
            return None
        return RoleView(supervisor.status(role).state.value, supervisor.queue_depth(role))

    return view
