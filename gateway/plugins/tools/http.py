"""The http executor: POST the call to a URL, with a destination allow-list against SSRF.

Private, loopback, link-local and other non-public addresses are refused unless
``tools.http.allow`` names their network (or the host name). The check sits where the address
is chosen: a resolver in front of aiohttp's connector drops every address the policy refuses,
and aiohttp connects only to what the resolver returned, so a name that resolves to a public
address when checked and a private one when used (DNS rebinding) has no second lookup to
exploit. Literal IP hosts never reach a resolver, so they are checked before the request, in
every spelling that leads to the same place: numeric IPv4 forms (2130706433, 0x7f.1, 0177.0.0.1)
and IPv6 addresses carrying an IPv4 one (::127.0.0.1, ::ffff:7f00:1, 6to4, NAT64). Redirects
are not followed, since each hop would need the same checks.

The request body is seed 004's ToolCallRequest: ``{tool_id, agent_id, microdao_id, args,
context}``. An answer shaped like a ToolCallResult (``{ok, result, error}``) is unwrapped;
any other JSON is the result as it stands.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from gateway.errors import DestinationRefused, ToolFailed
from gateway.plugins.tools.registry import Caller, ToolSpec
from gateway.plugins.tools.settings import HttpTools, ToolDefinition

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder()


# IPv6 prefixes whose last 32 bits are an IPv4 address: these addresses are other spellings of
# that IPv4 destination (IPv4-mapped ::ffff:a.b.c.d, SIIT's IPv4-translated ::ffff:0:a.b.c.d,
# NAT64's well-known prefix, whose translator connects to the IPv4 address).
_CARRIES_IPV4 = (
    ipaddress.IPv6Network("::ffff:0:0/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
)
# Never a public destination, whatever follows the prefix: IPv4-compatible addresses (::a.b.c.d,
# deprecated since RFC 4291, still routed to the IPv4 address by some stacks; Python 3.11
# calls ::127.0.0.1 global), the rest of ::/8, and NAT64's local-use prefix (RFC 8215).
_NEVER_PUBLIC = (ipaddress.IPv6Network("::/8"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 destination an IPv6 address spells, if it is one of those spellings."""
    if any(address in prefix for prefix in _CARRIES_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_internal(address: Address) -> bool:
    """Not a public unicast address: private, loopback, link-local, shared, reserved, multicast.

    IPv6 addresses that carry an IPv4 address (mapped, translated, 6to4, NAT64) are internal
    when that IPv4 address is: they are other spellings of the same destination.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return is_internal(embedded)
        if any(address in prefix for prefix in _NEVER_PUBLIC):
            return True
    return not address.is_global or address.is_multicast


# What getaddrinfo reads as an IPv4 address without asking DNS (inet_aton's forms).
_NUMERIC_IPV4 = re.compile(r"[0-9][0-9a-fx.]*", re.IGNORECASE)


def literal_address(host: str) -> Address | None:
    """The address a URL's host names without DNS, in any spelling the connection would accept.

    Besides IP literals: inet_aton's numeric forms (2130706433, 0x7f.1, 0177.0.0.1, 127.1),
    which aiohttp would otherwise hand to getaddrinfo as names. Real names go to the resolver.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _NUMERIC_IPV4.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


class Destinations:
    """The allow-list, as a pure policy: may the executor connect to this address for this host?"""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        networks: list[Network] = []
        hosts: set[str] = set()
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(_host_key(entry))
        self._networks = tuple(networks)
        self._hosts = frozenset(hosts)

    def permits(self, host: str, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address):
            address = embedded_ipv4(address) or address
        if not is_internal(address):
            return True
        # Allowing a name trusts whatever it resolves to: the operator's explicit choice.
        if _host_key(host) in self._hosts:
            return True
        return any(address in network for network in self._networks)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and keeps only the addresses ``Destinations`` permits."""

    def __init__(self, destinations: Destinations, inner: AbstractResolver | None = None) -> None:
        self._destinations = destinations
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if self._permitted(host, r["host"])]
        if not kept:
            addresses = ", ".join(sorted({r["host"] for r in found})) or "nothing"
            raise DestinationRefused(
                f"{host} resolves to {addresses}: not a public address and not in tools.http.allow"
            )
        return kept

    def _permitted(self, host: str, address: str) -> bool:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return False
        return self._destinations.permits(host, parsed)

    async def close(self) -> None:
        await self._inner.close()


class HttpClient:
    """The executor's own session (never the upstream one: local engines are private on purpose)."""

    def __init__(self, settings: HttpTools, resolver: AbstractResolver | None = None) -> None:
        self._destinations = Destinations(settings.allow)
        self._max_bytes = settings.max_response_bytes
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._destinations, self._resolver), ttl_dns_cache=10
        )
        # trust_env=False: an HTTP(S)_PROXY from the environment would connect on our behalf
        # to addresses this client never checked.
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str) -> None:
        """Refuse what the resolver cannot see: other schemes and literal addresses."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolFailed(f"tool target {url!r} is not an http(s) URL")
        address = literal_address(parts.hostname)
        if address is None:
            return
        if not self._destinations.permits(parts.hostname, address):
            raise ToolFailed(
                f"{parts.hostname} is not a public address and not in tools.http.allow"
            )

    async def post(self, url: str, body: bytes, headers: dict[str, str], seconds: float) -> Any:
        self.check_url(url)
        if self._session is None:
            raise ToolFailed("the http executor is not running")
        try:
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", **headers},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                data = await self._read(response)
                status = response.status
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, DestinationRefused):
                raise ToolFailed(str(exc.os_error)) from None
            raise ToolFailed(f"cannot resolve {urlsplit(url).hostname}") from None
        except aiohttp.ClientError as exc:
            raise ToolFailed(f"cannot reach the tool at {url}: {type(exc).__name__}") from None
        if status >= 300:
            snippet = data[:300].decode("utf-8", "replace")
            raise ToolFailed(f"tool endpoint answered HTTP {status}: {snippet}")
        try:
            return _decode.decode(data) if data else None
        except msgspec.DecodeError:
            return data.decode("utf-8", "replace")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max_bytes:
                raise ToolFailed(
                    f"tool answer exceeds tools.http.max_response_bytes ({self._max_bytes})"
                )
            parts.append(chunk)
        return b"".join(parts)


class HttpTool:
    def __init__(self, spec: ToolSpec, client: HttpClient, headers: dict[str, str]) -> None:
        self._spec = spec
        self._client = client
        self._headers = headers

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, arguments: dict[str, Any], caller: Caller) -> Any:
        body = _encode(
            {
                "tool_id": self._spec.id,
                "agent_id": caller.agent_id,
                "microdao_id": caller.project,
                "args": arguments,
                "context": {
                    "request_id": caller.request_id,
                    "channel_id": caller.channel,
                    **caller.context,
                },
            }
        )
        answer = await self._client.post(self._spec.target, body, self._headers, self._spec.timeout)
        return _unwrapped(answer)


def _unwrapped(answer: Any) -> Any:
    if isinstance(answer, dict) and isinstance(answer.get("ok"), bool):
        if not answer["ok"]:
            raise ToolFailed(str(answer.get("error") or "the tool answered ok: false"))
        return answer.get("result")
    return answer


def _host_key(host: str) -> str:
    return host.strip().lower().rstrip(".")


def http_kind(client: HttpClient) -> Callable[[ToolDefinition], HttpTool]:
    """The ``http`` executor kind: tools that share ``client`` (and its allow-list)."""

    def build(definition: ToolDefinition) -> HttpTool:
        parts = urlsplit(definition.target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"target: expected an http(s) URL, got {definition.target!r}")
        return HttpTool(ToolSpec.from_definition(definition), client, dict(definition.headers))

    return build
