"""Who may call, and as whom: admin key, virtual keys, embedded (keyless, loopback-only) mode.

Embedded mode is what a person running turnout on their own machine gets by default: no keys
anywhere, so any local caller is let in with whatever (or no) key its client sends. Once an
admin key or any virtual key exists, every API call needs a valid key.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.asgi import Scope, header
from gateway.config.schema import Auth
from gateway.errors import Forbidden, HostNotAllowed, Unauthorized
from gateway.hosts import HostPolicy
from gateway.identity import Identity
from gateway.keys import KeyCache, KeyRecord

ADMIN = Identity(key_id="admin", agent_id="admin", is_admin=True, trusted=True)
_metadata = msgspec.json.Decoder(dict[str, Any])
_string = msgspec.json.Decoder(str)


def is_loopback(host: str) -> bool:
    # The common answers first: this runs for every keyless request.
    if host == "127.0.0.1" or host == "::1":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


_CROSS_SITE = (
    "cross-site browser request refused: without keys, turnout trusts only this machine, and a "
    "web page from elsewhere is not this machine (set auth.admin_key or use a key)"
)


def _foreign_origin(origin: bytes | None, host: bytes | None) -> bool:
    """Keyless trust rests on "the caller is on this machine", which any web page open in a local
    browser also satisfies; browsers always send Origin on such cross-site requests.
    """
    if origin is None or origin == b"null":
        return origin == b"null"
    netloc = urlsplit(origin.decode("latin-1")).netloc.lower()
    return netloc != (host or b"").decode("latin-1").lower()


def presented_key(scope: Scope) -> str | None:
    """OpenAI clients send ``Authorization: Bearer``; Anthropic clients ``x-api-key``."""
    value = header(scope, b"authorization")
    if value is not None:
        text = value.decode("latin-1").strip()
        if text[:7].lower() == "bearer ":
            return text[7:].strip() or None
        return text or None
    value = header(scope, b"x-api-key")
    return value.decode("latin-1").strip() or None if value is not None else None


class Authenticator:
    def __init__(self, config: Auth, keys: KeyCache) -> None:
        self._config = config
        self._keys = keys
        self._admin = config.admin_key
        self._identities: dict[str, tuple[KeyRecord, Identity]] = {}
        self._hosts = HostPolicy(
            config.allowed_hosts,
            open_network=config.allow_open_network,
            machine=socket.gethostname(),
        )
        # Host values already found acceptable, so the common case is one dict lookup. Only
        # accepted values are kept (a bounded set of real names); refusals are not cached.
        self._local_hosts: set[bytes] = set()

    @property
    def embedded(self) -> bool:
        """No keys of any kind: only loopback callers, no key needed."""
        return not self._admin and not self._keys.any_keys

    def identify(self, scope: Scope) -> Identity:
        secret = presented_key(scope)
        if secret is not None:
            if self._admin and hmac.compare_digest(secret, self._admin):
                return ADMIN
            record = self._keys.lookup(secret)
            if record is not None:
                return self._identity(record)
        if self.embedded:
            self.check_local_request(scope)
            client = scope.get("client")
            if self._config.allow_open_network or (client is not None and is_loopback(client[0])):
                return Identity(
                    key_id=None, agent_id="local", trusted=self._config.trust_agent_headers
                )
            raise Unauthorized("turnout has no API keys configured and accepts only local callers")
        if secret is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <key> (or x-api-key)")
        raise Unauthorized("invalid API key")

    def check_local_request(self, scope: Scope) -> None:
        """Before trusting a caller for being local: refuse what a web page could have sent.

        Two ways a page in a local browser reaches a keyless gateway: a cross-site request (its
        Origin names another site) and DNS rebinding (its own name now resolves here; the Host
        header still carries that name). Every path that trusts loopback without a key comes here.
        """
        # Two scans, the first one short: clients send Host first. (One scan comparing every
        # name twice cost more: this runs for every keyless request.)
        headers = scope["headers"]
        host = origin = None
        for name, value in headers:
            if name == b"host":
                host = value
                break
        for name, value in headers:
            if name == b"origin":
                origin = value
                break
        if host is not None and host not in self._local_hosts:
            text = bytes(host).decode("latin-1")
            if not self._hosts.permits(text):
                raise HostNotAllowed(self._hosts.refusal(text))
            if len(self._local_hosts) < 64:
                self._local_hosts.add(bytes(host))
        if origin is not None and _foreign_origin(origin, host):
            raise Forbidden(_CROSS_SITE)

    def check_local_page(self, scope: Scope) -> None:
        """For endpoints open to everyone with keys (metrics, dashboard files): a keyless
        gateway still answers only its own names, so a rebound page cannot read them."""
        if self.embedded:
            self.check_local_request(scope)

    def _identity(self, record: KeyRecord) -> Identity:
        # One Identity per key record, not one per request; a refreshed record (new limits, a
        # revocation) is a new object, so the identity is rebuilt from it.
        cached = self._identities.get(record.id)
        if cached is None or cached[0] is not record:
            identity = Identity(
                key_id=record.id,
                agent_id=record.agent_id,
                limits=record.limits,
                allowed_models=record.allowed_models,
                trusted=record.trusted,
            )
            cached = self._identities[record.id] = (record, identity)
        return cached[1]

    def require_admin(self, scope: Scope) -> Identity:
        """The admin key when one is set; without one, whoever is on this machine administers."""
        secret = presented_key(scope)
        if self._admin:
            if secret is not None and hmac.compare_digest(secret, self._admin):
                return ADMIN
            if secret is None:
                raise Unauthorized(
                    "this endpoint needs the admin key: Authorization: Bearer <auth.admin_key>"
                )
            raise Forbidden(
                "this endpoint needs the admin key (auth.admin_key), not an ordinary key"
            )
        self.check_local_request(scope)
        client = scope.get("client")
        if client is not None and is_loopback(client[0]):
            return ADMIN
        raise Forbidden("no admin key is configured, so only local callers may use this endpoint")


def speaking_for(identity: Identity, scope: Scope, fields: dict[str, msgspec.Raw]) -> Identity:
    """Trusted callers name the agent, project and channel they act for (seed 004's metadata)."""
    agent = identity.agent_id
    project = channel = None
    meta: dict[str, Any] = {}
    raw = fields.get("metadata")
    if raw is not None:
        try:
            meta = _metadata.decode(raw)
        except msgspec.DecodeError:
            meta = {}
    project = _text(
        meta.get("microdao_id") or meta.get("project") or header(scope, b"x-project-id")
    )
    channel = _text(meta.get("channel_id") or header(scope, b"x-channel-id"))
    if identity.trusted:
        named = header(scope, b"x-agent-id") or meta.get("agent_id") or _user(fields)
        if named:
            agent = _text(named) or agent
    if agent == identity.agent_id and project is None and channel is None:
        return identity
    return Identity(
        key_id=identity.key_id,
        agent_id=agent,
        project=project,
        channel=channel,
        is_admin=identity.is_admin,
        limits=identity.limits,
        allowed_models=identity.allowed_models,
        trusted=identity.trusted,
    )


def may_use(identity: Identity, model: str) -> bool:
    return not identity.allowed_models or any(
        fnmatchcase(model, p) for p in identity.allowed_models
    )


def _user(fields: dict[str, msgspec.Raw]) -> str | None:
    raw = fields.get("user")
    if raw is None:
        return None
    try:
        return _string.decode(raw)
    except msgspec.DecodeError:
        return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")[:128]
    return str(value)[:128]
