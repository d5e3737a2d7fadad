"""Peers made routable: one ``peer:<name>`` provider each, and their roles as targets."""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from gateway.config.peers import HOP_HEADER, PEER_PREFIX, Peer
from gateway.config.roles import ROLE_PREFIX
from gateway.config.schema import Config
from gateway.config.upstreams import Model, Provider, Reasoning, Target


def peer_provider_name(peer: str) -> str:
    return PEER_PREFIX + peer


def peer_provider(config: Config, peer: Peer) -> Provider:
    """A peer is an OpenAI-compatible upstream at its /v1; the hop header marks our requests."""
    return Provider(
        kind="openai-compatible",
        base_url=peer.url.rstrip("/") + "/v1",
        api_key=peer.key,
        local=peer.local,
        headers={HOP_HEADER: f"{config.server.host}:{config.server.port}"},
        timeouts=peer.timeouts,
        # The peer strips what its own engines need stripped, and takes thinking back.
        strip_volatile_prefix=False,
        reasoning=Reasoning(history=True),
    )


def expand_peers(config: Config) -> Config:
    """Each peer's roles join the models of the same name (a role's model, an alias, a pattern
    does not count), or become models of their own; the forwarder orders them per request."""
    if not config.peers:
        return config
    providers = dict(config.providers)
    models = list(config.models)
    index = {name: i for i, m in enumerate(models) for name in (m.name, *m.aliases)}
    for name, peer in config.peers.items():
        provider = peer_provider_name(name)
        providers[provider] = peer_provider(config, peer)
        for role in peer.roles:
            target = Target(
                provider=provider, model=role, priority=_role_priority(models, index, role)
            )
            at = index.get(role)
            if at is None:
                index[role] = len(models)
                models.append(
                    Model(name=role, targets=(target,), description=f"role on peer {name}")
                )
            else:
                models[at] = msgspec.structs.replace(
                    models[at], targets=(*models[at].targets, target)
                )
    return msgspec.structs.replace(config, providers=providers, models=tuple(models))


def _role_priority(models: list[Model], index: dict[str, int], role: str) -> int:
    """Beside the local role's target: the fleet, not the priority, orders them."""
    at = index.get(role)
    if at is None:
        return 0
    targets = models[at].targets
    local = [t.priority for t in targets if t.provider == ROLE_PREFIX + role]
    return min(local) if local else min((t.priority for t in targets), default=0)


def peer_problems(config: Config) -> list[str]:
    problems: list[str] = []
    for name, peer in config.peers.items():
        where = f"peers.{name}"
        if not name or ":" in name:
            problems.append(f"{where}: expected a name without ':'")
        if urlsplit(peer.url).scheme not in ("http", "https"):
            problems.append(f"{where}.url: expected an http(s) URL such as http://10.0.0.2:8080")
        if not peer.roles:
            problems.append(f"{where}.roles: expected the roles it serves, e.g. [coder, fast]")
        problems.extend(f"{where}.roles: expected role names" for r in peer.roles if not r)
        if not peer.poll_seconds > 0:
            problems.append(f"{where}.poll_seconds: expected a number > 0")
    return problems
