"""DNS rebinding against a keyless gateway, over real sockets to a real turnout.

A page on evil.example whose name is rebound to 127.0.0.1 sends same-origin requests: its own
name in ``Host`` and ``Origin``. A keyless gateway must refuse every endpoint to it, HTTP and
WebSocket alike, while its own names (and ``auth.allowed_hosts``) keep working. The requests are
written by hand so that every header is exactly what such a browser sends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.hosts import HostPolicy, split_host
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

EVIL = "evil.example:8080"
EVIL_ORIGIN = "http://evil.example:8080"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "ping"}]}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def gateway(upstream: FakeOpenAI, **sections: Any) -> AbstractAsyncContextManager[RunningGateway]:
    raw = {
        "providers": {"up": {"kind": "openai", "base_url": upstream.url, "local": True}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
        "routing": {"retries": 0},
        "plugins": {"enabled": ["tools"]},
        **sections,
    }
    return running_gateway(config_of(raw))


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}

    def json(self) -> Any:
        return json.loads(self.body)


async def send(
    gw: RunningGateway,
    method: str,
    path: str,
    host: str | None,
    body: Any = None,
    version: str = "1.1",
    **headers: str,
) -> Answer:
    """One request on its own connection, exactly as written; the whole answer (until close)."""
    address = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines += [] if "upgrade" in headers else ["Connection: close"]
    lines += [f"Content-Length: {len(data)}"] if method == "POST" else []
    if body is not None:
        lines.append("Content-Type: application/json")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    try:
        async with asyncio.timeout(10):
            if "upgrade" in headers:  # a refused upgrade ends with its body, not with a close
                head = await reader.readuntil(b"\r\n\r\n")
                answer = Answer(head)
                length = int(answer.headers.get("content-length", "0"))
                return Answer(head + await reader.readexactly(length))
            return Answer(await reader.read())
    finally:
        writer.close()


def upgrade(key: str = "dGhlIHNhbXBsZSBub25jZQ==") -> dict[str, str]:
    return {
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec_websocket_key": key,
        "sec_websocket_version": "13",
    }


def chats(upstream: FakeOpenAI) -> int:
    return sum(1 for r in upstream.requests if r.path.endswith("/chat/completions"))


# Every kind of endpoint a rebound page would try: raw-ASGI proxy paths, Litestar controllers
# behind each guard, plugin endpoints and the metrics a page could read.
REBOUND = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/messages", {**CHAT, "max_tokens": 5}),
    ("POST", "/v1/messages/count_tokens", CHAT),
    ("POST", "/v1/responses", {"model": "chat", "input": "ping"}),
    ("POST", "/internal/llm/proxy", CHAT),
    ("GET", "/v1/models", None),
    ("GET", "/v1/usage", None),
    ("GET", "/engine/status", None),
    ("GET", "/v1/requests/recent", None),
    ("GET", "/v1/tools", None),
    ("POST", "/v1/tools/call", {"tool": "x", "arguments": {}}),
    ("GET", "/metrics", None),
    ("GET", "/ui/", None),
]


async def test_a_rebound_page_is_refused_everywhere_by_a_keyless_gateway(
    fake: FakeOpenAI,
) -> None:
    async with gateway(fake) as gw:
        answers = {
            path: await send(gw, method, path, EVIL, body, origin=EVIL_ORIGIN)
            for method, path, body in REBOUND
        }
        socket = await send(gw, "GET", "/v1/chat/ws", EVIL, origin=EVIL_ORIGIN, **upgrade())
        # The same page without Origin (a GET a browser sends bare) is refused too.
        bare = await send(gw, "GET", "/v1/usage", EVIL)
    assert {path: a.status for path, a in answers.items()} == {path: 403 for _, path, _ in REBOUND}
    assert chats(fake) == 0
    for path, answer in answers.items():
        if path.startswith("/v1/messages"):
            assert answer.json()["type"] == "error"
            error = answer.json()["error"]
            assert error["type"] == "permission_error"
        else:
            error = answer.json()["error"]
            assert error["code"] == "host_not_allowed", path
        assert "evil.example:8080" in error["message"] and "auth.allowed_hosts" in error["message"]
    assert socket.status == 403 and socket.json()["error"]["code"] == "host_not_allowed"
    assert bare.status == 403


async def test_a_rebound_page_cannot_open_a_websocket_with_a_key_message(
    fake: FakeOpenAI,
) -> None:
    """The upgrade itself is refused: no socket exists to send an auth or chat message on."""
    async with gateway(fake) as gw:
        refused = await send(gw, "GET", "/v1/chat/ws", "evil.example", **upgrade())
        mine = await send(gw, "GET", "/v1/chat/ws", "127.0.0.1", **upgrade())
    assert refused.status == 403
    assert mine.status == 101


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "localhost",
        "LocalHost.:{port}",
        "127.0.0.7:{port}",
        "[::1]:{port}",
        "[::1]",
        "dev.localhost:{port}",
    ],
)
async def test_this_machines_names_are_served(fake: FakeOpenAI, host: str) -> None:
    async with gateway(fake) as gw:
        name = host.format(port=urlsplit(gw.url).port)
        chat = await send(gw, "POST", "/v1/chat/completions", name, CHAT, origin=f"http://{name}")
        status = await send(gw, "GET", "/engine/status", name)
    assert chat.status == 200 and chat.json()["choices"][0]["message"]["content"]
    assert status.status == 200


async def test_allowed_hosts_adds_names_ports_and_patterns(fake: FakeOpenAI) -> None:
    allowed = ["gw.example.com", "*.corp.lan", "pinned.example:8443"]
    async with gateway(fake, auth={"allowed_hosts": allowed}) as gw:
        served = {
            host: (await send(gw, "POST", "/v1/chat/completions", host, CHAT)).status
            for host in (
                "gw.example.com:8080",
                "GW.example.com",
                "a.corp.lan",
                "pinned.example:8443",
            )
        }
        pinned_elsewhere = await send(gw, "POST", "/v1/chat/completions", "pinned.example:9", CHAT)
        evil = await send(gw, "GET", "/v1/usage", EVIL)
    assert served == dict.fromkeys(served, 200)
    assert pinned_elsewhere.status == 403 and evil.status == 403


async def test_an_open_network_gateway_serves_addresses_and_local_names(fake: FakeOpenAI) -> None:
    """--host 0.0.0.0 with auth.allow_open_network: LAN addresses and service names are how the
    network reaches it; a public name is still what a rebound page would send."""
    async with gateway(fake, auth={"allow_open_network": True}) as gw:
        served = {
            host: (await send(gw, "POST", "/v1/chat/completions", host, CHAT)).status
            for host in ("192.168.1.20:8080", "[fd00::5]:8080", "turnout:8080", "box.local")
        }
        evil = await send(gw, "POST", "/v1/chat/completions", EVIL, CHAT)
    assert served == dict.fromkeys(served, 200)
    assert evil.status == 403 and "IP addresses" in evil.json()["error"]["message"]


async def test_a_gateway_with_keys_does_not_look_at_host(fake: FakeOpenAI) -> None:
    async with gateway(fake, auth={"admin_key": "sk-admin-1"}) as gw:
        keyed = await send(
            gw, "POST", "/v1/chat/completions", EVIL, CHAT, authorization="Bearer sk-admin-1"
        )
        keyless = await send(gw, "POST", "/v1/chat/completions", EVIL, CHAT)
    assert keyed.status == 200
    assert keyless.status == 401


async def test_a_request_without_host_is_served(fake: FakeOpenAI) -> None:
    """HTTP/1.0 clients may omit Host; browsers never do, and rebinding needs a browser."""
    async with gateway(fake) as gw:
        answer = await send(gw, "GET", "/v1/models", None, version="1.0")
    assert answer.status == 200 and answer.json()["object"] == "list"


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", "8080")),
        ("[::1]:8080", ("::1", "8080")),
        ("[::1]", ("::1", "")),
        ("LOCALHOST.", ("localhost", "")),
        ("::1", ("::1", "")),
        ("evil.example:80", ("evil.example", "80")),
    ],
)
def test_host_values_split_into_name_and_port(value: str, parts: tuple[str, str]) -> None:
    assert split_host(value) == parts


def test_the_policy_by_mode() -> None:
    loopback = HostPolicy(machine="mybox")
    open_network = HostPolicy(open_network=True)
    anything = HostPolicy(["*"])
    assert all(loopback.permits(h) for h in ("127.0.0.1", "127.1.2.3:1", "[::1]:8", "mybox:8080"))
    assert not any(
        loopback.permits(h)
        for h in ("evil.example", "10.0.0.1:8080", "turnout", "127.0.0.1.evil.example", "")
    )
    assert all(open_network.permits(h) for h in ("10.0.0.1", "turnout", "k.svc.cluster.local"))
    assert not open_network.permits("evil.example") and not open_network.permits("local.evil.io")
    assert anything.permits("evil.example")
