"""The http executor: seed 004's request shape, and no SSRF through the gateway.

A real tool server on loopback; loopback is refused unless allow-listed, so most tests list
it. Names are resolved by an injected resolver where a test needs a name to point somewhere
private: nothing here resolves or connects outside this machine.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.errors import DestinationRefused, ToolFailed
from gateway.plugins.tools.calls import Outcome, call_tool
from gateway.plugins.tools.http import (
    Destinations,
    GuardedResolver,
    HttpClient,
    http_kind,
    is_internal,
)
from gateway.plugins.tools.registry import Caller, ToolRegistry
from gateway.plugins.tools.settings import HttpTools, ToolDefinition
from tests.tools_fixtures.http_tool_server import HttpToolServer

SOFIA = Caller("agent:sofia", project="microdao:7", request_id="req-1", context={"k": "v"})
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}


class StaticResolver(AbstractResolver):
    """Names to addresses from a table, like a DNS server the test controls."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.table[host]
        ]

    async def close(self) -> None:
        return None


@pytest.fixture
async def server() -> AsyncIterator[HttpToolServer]:
    async with HttpToolServer() as running:
        yield running


async def call(
    url: str,
    arguments: dict[str, Any] | None = None,
    allow: tuple[str, ...] = ("127.0.0.1",),
    resolver: AbstractResolver | None = None,
    **settings: Any,
) -> Outcome:
    client = HttpClient(HttpTools(allow=allow, **settings), resolver)
    registry = ToolRegistry()
    registry.register_kind("http", http_kind(client))
    definition = ToolDefinition(
        id="t",
        executor="http",
        target=url,
        input_schema=CITY,
        timeout_seconds=1.0,
        headers={"X-Tool-Token": "secret"},
    )
    registry.add(registry.build(definition))
    await client.start()
    try:
        return await call_tool(registry, "t", arguments or {"city": "Paris"}, SOFIA)
    finally:
        await client.close()


# --- the policy, pure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::",
        "2002:a9fe:a9fe::1",  # 6to4 around 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 around 127.0.0.1
    ],
)
def test_non_public_addresses_are_internal(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))
    assert not Destinations().permits("host", ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1", "64:ff9b::101:101"]
)
def test_public_addresses_are_permitted(address: str) -> None:
    assert Destinations().permits("example.com", ipaddress.ip_address(address))


def test_the_allow_list_takes_networks_and_host_names() -> None:
    allow = Destinations(["127.0.0.1", "10.0.0.0/8", "Tools.Internal."])
    loopback = ipaddress.ip_address("127.0.0.1")
    assert allow.permits("x", loopback)
    assert allow.permits("x", ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not allow.permits("x", ipaddress.ip_address("127.0.0.2"))
    assert allow.permits("x", ipaddress.ip_address("10.20.30.40"))
    assert allow.permits("tools.internal", ipaddress.ip_address("192.168.7.7"))
    assert not allow.permits("other.internal", ipaddress.ip_address("192.168.7.7"))


async def test_the_resolver_keeps_only_permitted_addresses() -> None:
    names = StaticResolver(
        {"mixed.test": ["10.1.2.3", "127.0.0.1"], "private.test": ["10.1.2.3", "169.254.169.254"]}
    )
    guarded = GuardedResolver(Destinations(["127.0.0.1"]), names)
    kept = await guarded.resolve("mixed.test", 80)
    assert [r["host"] for r in kept] == ["127.0.0.1"]
    with pytest.raises(DestinationRefused, match=r"10\.1\.2\.3, 169\.254\.169\.254"):
        await guarded.resolve("private.test", 80)


def test_literal_addresses_and_other_schemes_are_checked_before_any_connection() -> None:
    client = HttpClient(HttpTools())
    for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:1/", "http://[::1]/"):
        with pytest.raises(ToolFailed, match="not a public address"):
            client.check_url(url)
    with pytest.raises(ToolFailed, match="not an http"):
        client.check_url("file:///etc/passwd")
    client.check_url("https://example.com/tool")


# --- through a real tool server ------------------------------------------------------------


async def test_an_allow_listed_tool_server_gets_seed_004s_request(server: HttpToolServer) -> None:
    outcome = await call(server.url("/weather"))
    assert outcome.ok and outcome.result == {"city": "Paris", "temperature_c": 21}
    [sent] = server.requests
    assert sent["body"] == {
        "tool_id": "t",
        "agent_id": "agent:sofia",
        "microdao_id": "microdao:7",
        "args": {"city": "Paris"},
        "context": {"request_id": "req-1", "channel_id": None, "k": "v"},
    }
    assert sent["headers"]["X-Tool-Token"] == "secret"


async def test_answers_with_and_without_the_result_envelope(server: HttpToolServer) -> None:
    plain = await call(server.url("/plain"))
    assert plain.result == {"echo": {"city": "Paris"}, "agent": "agent:sofia"}
    refused = await call(server.url("/refuse"))
    assert (refused.code, refused.error) == ("tool_error", "no such city")
    failed = await call(server.url("/error"))
    assert failed.code == "tool_error" and "HTTP 500" in (failed.error or "")


async def test_loopback_is_refused_unless_allow_listed(server: HttpToolServer) -> None:
    outcome = await call(server.url("/weather"), allow=())
    assert outcome.code == "tool_error" and "not a public address" in (outcome.error or "")
    assert server.requests == []


async def test_localhost_by_name_is_refused(server: HttpToolServer) -> None:
    outcome = await call(server.url("/weather", host="localhost"), allow=())
    assert outcome.code == "tool_error"
    assert "localhost resolves to" in (outcome.error or "")
    assert server.requests == []


async def test_the_cloud_metadata_address_is_refused() -> None:
    outcome = await call("http://169.254.169.254/latest/meta-data/", allow=("127.0.0.1",))
    assert outcome.code == "tool_error" and "169.254.169.254" in (outcome.error or "")


async def test_a_name_resolving_to_a_private_address_is_refused(server: HttpToolServer) -> None:
    names = StaticResolver({"weather.example.test": ["127.0.0.2"]})
    url = f"http://weather.example.test:{server.port}/weather"
    outcome = await call(url, allow=("127.0.0.1",), resolver=names)
    assert outcome.code == "tool_error"
    assert "weather.example.test resolves to 127.0.0.2" in (outcome.error or "")
    assert names.asked == ["weather.example.test"] and server.requests == []


async def test_a_name_connects_to_the_address_that_was_checked(server: HttpToolServer) -> None:
    names = StaticResolver({"weather.example.test": ["127.0.0.2", "127.0.0.1"]})
    url = f"http://weather.example.test:{server.port}/weather"
    outcome = await call(url, allow=("127.0.0.1",), resolver=names)
    assert outcome.ok and len(server.requests) == 1
    assert server.requests[0]["headers"]["Host"] == f"weather.example.test:{server.port}"


async def test_redirects_are_not_followed(server: HttpToolServer) -> None:
    outcome = await call(server.url("/redirect"))
    assert outcome.code == "tool_error" and "HTTP 302" in (outcome.error or "")


async def test_timeouts_and_oversized_answers(server: HttpToolServer) -> None:
    slow = await call(server.url("/slow"))
    assert slow.code == "timeout"
    server.big_bytes = 4096
    big = await call(server.url("/big"), max_response_bytes=1000)
    assert big.code == "tool_error" and "max_response_bytes" in (big.error or "")


# Every spelling of a loopback, private or link-local destination an attacker might put in a
# tool URL: IPv4 in decimal, octal, hex and short forms (resolved by getaddrinfo, which accepts
# them all) and IPv6 addresses that carry an IPv4 address (compatible, mapped, translated,
# 6to4, NAT64). None may reach the tool server listening on 127.0.0.1.
DISGUISED = [
    "2130706433",  # 127.0.0.1 in decimal
    "0x7f000001",
    "017700000001",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f.0x0.0x0.0x1",
    "127.000.000.001",
    "127.1",
    "127.0.1",
    "0177.1",
    "0x7f.1",
    "0",
    "0.0.0.0",
    "167772161",  # 10.0.0.1
    "0xa9fea9fe",  # 169.254.169.254
    "2852039166",
    "[::1]",
    "[::127.0.0.1]",
    "[::7f00:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::ffff:0:127.0.0.1]",
    "[2002:7f00:1::]",
    "[64:ff9b::7f00:1]",
    "[64:ff9b:1::7f00:1]",
    "[::169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[::10.0.0.1]",
]


@pytest.mark.parametrize("host", DISGUISED)
async def test_disguised_internal_addresses_are_refused(server: HttpToolServer, host: str) -> None:
    outcome = await call(f"http://{host}:{server.port}/weather", allow=())
    assert outcome.code == "tool_error"
    assert "not a public address" in (outcome.error or "")
    assert server.requests == []


@pytest.mark.parametrize(
    "address", ["::127.0.0.1", "::10.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b:1::7f00:1", "::8.8.8.8"]
)
def test_ipv4_compatible_and_translated_addresses_are_internal(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))


def test_an_allow_listed_ipv4_network_covers_its_ipv6_spellings() -> None:
    allow = Destinations(["127.0.0.0/8"])
    for spelling in ("::ffff:127.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"):
        assert allow.permits("x", ipaddress.ip_address(spelling)), spelling
