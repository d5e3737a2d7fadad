"""What one peer's engines are doing, kept current off the request path.

Two loops per peer. One follows its ``GET /engine/events`` stream: a swap there shows here as
it happens. The other reads its ``GET /engine/status`` every ``poll_seconds``: the queue
depths (events carry none), the whole picture after a reconnect, and the states while the
stream is down (a peer that is not a turnout with engines answers no events at all). When
the stream drops, the status is read at once: a peer that died is known as unreachable
within one connect attempt, not one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import msgspec

from gateway.config.peers import Peer
from gateway.peers.policy import RoleView

log = logging.getLogger("turnout.peers")

# A dropped event stream is followed again after this, doubling up to the peer's poll interval
# (at least RECONNECT_MAX): a peer that is down costs a connect attempt now and then, no more.
RECONNECT_MIN = 0.25
RECONNECT_MAX = 5.0
# The event stream sends a comment every 15 s (gateway/api/engine_events.py): a longer silence
# is a dead connection (a box that lost power sends no FIN).
EVENTS_SILENCE = 45.0


class _Event(msgspec.Struct):
    role: str
    state: str


class _Engine(msgspec.Struct):
    state: str
    queue: int = 0


class _Status(msgspec.Struct):
    engines: dict[str, _Engine] = {}


_EVENT = msgspec.json.Decoder(_Event)
_STATUS = msgspec.json.Decoder(_Status)


class PeerWatcher:
    """One peer's roles as last seen; only its own two tasks write them (one event loop)."""

    def __init__(self, name: str, peer: Peer) -> None:
        self.name = name
        self.peer = peer
        self.roles: dict[str, RoleView] = {}
        self.reachable = False
        self.following = False
        self.error = "not reached yet"
        self.seen_at: float | None = None
        self._url = peer.url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {peer.key}"} if peer.key else {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def view(self, role: str) -> RoleView | None:
        """``role`` here as far as we know; None while the peer is unreachable."""
        return self.roles.get(role) if self.reachable else None

    def start(self, session: aiohttp.ClientSession) -> None:
        self._tasks = [
            asyncio.create_task(self._poll(session), name=f"peer {self.name} status"),
            asyncio.create_task(self._follow(session), name=f"peer {self.name} events"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        """Read the peer's /engine/status once."""
        timeout = aiohttp.ClientTimeout(
            total=self.peer.timeouts.connect + 5.0, sock_connect=self.peer.timeouts.connect
        )
        try:
            async with session.get(
                self._url + "/engine/status", headers=self._headers, timeout=timeout
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise ValueError(f"/engine/status answered HTTP {response.status}")
            status = _STATUS.decode(body)
        except (
            OSError,
            TimeoutError,
            aiohttp.ClientError,
            ValueError,
            msgspec.MsgspecError,
        ) as exc:
            self._lost(f"{exc.__class__.__name__}: {exc}".rstrip(": "))
            return
        self.roles = {n: RoleView(e.state, e.queue) for n, e in status.engines.items()}
        self._reached()

    def describe(self) -> dict[str, Any]:
        """For /engine/status: what is known of this peer, reachable or not."""
        return {
            "url": self._url,
            "reachable": self.reachable,
            "following_events": self.following,
            "error": self.error or None,
            "seen_seconds_ago": (
                round(time.monotonic() - self.seen_at, 3) if self.seen_at is not None else None
            ),
            "serves": list(self.peer.roles),
            "roles": {n: {"state": v.state, "queue": v.queue} for n, v in self.roles.items()},
        }

    def _reached(self) -> None:
        if not self.reachable:
            log.info("peer %s reachable at %s", self.name, self._url)
        self.reachable = True
        self.error = ""
        self.seen_at = time.monotonic()

    def _lost(self, why: str) -> None:
        if self.reachable:
            log.warning("peer %s unreachable: %s", self.name, why)
        self.reachable = False
        self.error = why

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self.refresh(session)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.peer.poll_seconds):
                    await self._wake.wait()

    async def _follow(self, session: aiohttp.ClientSession) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                await self._read_events(session)
                delay = RECONNECT_MIN
            except (
                OSError,
                TimeoutError,
                aiohttp.ClientError,
                ValueError,
                msgspec.MsgspecError,
            ) as exc:
                log.debug("peer %s: event stream: %s", self.name, exc)
            if self.following:
                self.following = False
                # Whatever ended the stream, the status says at once whether the peer lives.
                self._wake.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(RECONNECT_MAX, self.peer.poll_seconds))

    async def _read_events(self, session: aiohttp.ClientSession) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.peer.timeouts.connect, sock_read=EVENTS_SILENCE
        )
        async with session.get(
            self._url + "/engine/events", headers=self._headers, timeout=timeout
        ) as response:
            if response.status != 200:
                # No local roles there (404), or a key that may not read them: polling only.
                await response.read()
                raise ValueError(f"/engine/events answered HTTP {response.status}")
            self.following = True
            async for line in response.content:
                if line.startswith(b"data:"):
                    self._apply(_EVENT.decode(line[5:].strip()))

    def _apply(self, event: _Event) -> None:
        before = self.roles.get(event.role)
        self.roles[event.role] = RoleView(event.state, before.queue if before else 0)
        self._reached()
