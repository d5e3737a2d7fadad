"""Keys and identities: hashing, embedded mode, admin key, trusted agents, model permissions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.auth import Authenticator, may_use, presented_key, speaking_for
from gateway.config import Auth, Limits
from gateway.errors import Forbidden, Unauthorized
from gateway.keys import KeyCache, connect, create_key, hash_key, list_keys, revoke_key


def scope(
    key: str | None = None, client: str = "127.0.0.1", header: str = "authorization", **extra: str
) -> dict[str, Any]:
    headers: list[tuple[bytes, bytes]] = []
    if key is not None:
        value = f"Bearer {key}" if header == "authorization" else key
        headers.append((header.encode(), value.encode()))
    headers.extend((k.replace("_", "-").encode(), v.encode()) for k, v in extra.items())
    return {"type": "http", "headers": headers, "client": (client, 50000)}


async def cache_with(tmp_path: Path, **key: Any) -> tuple[KeyCache, str, str]:
    database = str(tmp_path / "t.db")
    connection = connect(database)
    secret, record = create_key(connection, "ci", "agent-7", **key)
    connection.close()
    cache = KeyCache(database)
    await cache.start()
    return cache, secret, record.id


async def test_keys_are_stored_hashed_and_looked_up_by_hash(tmp_path: Path) -> None:
    cache, secret, key_id = await cache_with(tmp_path, limits=Limits(rpm=5))
    stored = sqlite3.connect(tmp_path / "t.db").execute("SELECT hash FROM keys").fetchall()
    assert stored == [(hash_key(secret),)] and secret not in str(stored)
    record = cache.lookup(secret)
    assert record is not None and record.id == key_id and record.limits == Limits(rpm=5)
    assert cache.lookup(secret + "x") is None
    await cache.stop()


async def test_revocation_reaches_a_running_cache(tmp_path: Path) -> None:
    cache, secret, key_id = await cache_with(tmp_path)
    connection = connect(str(tmp_path / "t.db"))
    assert revoke_key(connection, key_id)
    assert not revoke_key(connection, key_id)
    assert [k.id for k in list_keys(connection, include_revoked=True)] == [key_id]
    assert list_keys(connection) == []
    connection.close()
    cache._apply(await asyncio.to_thread(cache._fetch, 0.0))
    assert cache.lookup(secret) is None
    await cache.stop()


async def test_a_keys_identity_is_built_once_and_a_revoked_key_gets_none(tmp_path: Path) -> None:
    cache, secret, key_id = await cache_with(tmp_path, limits=Limits(rpm=5))
    auth = Authenticator(Auth(), cache)
    first = auth.identify(scope(secret))
    assert auth.identify(scope(secret)) is first and first.limits == Limits(rpm=5)
    connection = connect(str(tmp_path / "t.db"))
    assert revoke_key(connection, key_id)
    connection.close()
    cache._apply(await asyncio.to_thread(cache._fetch, 0.0))
    with pytest.raises(Unauthorized, match="invalid API key"):
        auth.identify(scope(secret))
    await cache.stop()


async def test_embedded_mode_lets_local_callers_in_with_any_key_and_nobody_else(
    tmp_path: Path,
) -> None:
    cache = KeyCache(str(tmp_path / "empty.db"))
    await cache.start()
    auth = Authenticator(Auth(), cache)
    assert auth.embedded
    assert auth.identify(scope()).agent_id == "local"
    assert auth.identify(scope("whatever-claude-code-sends", header="x-api-key")).key_id is None
    with pytest.raises(Unauthorized, match="only local callers"):
        auth.identify(scope(client="10.1.2.3"))
    open_auth = Authenticator(Auth(allow_open_network=True), cache)
    assert open_auth.identify(scope(client="10.1.2.3")).agent_id == "local"
    await cache.stop()


async def test_with_keys_every_call_needs_a_valid_one(tmp_path: Path) -> None:
    cache, secret, key_id = await cache_with(tmp_path, allowed_models=("local*",))
    auth = Authenticator(Auth(admin_key="adm-1"), cache)
    assert not auth.embedded
    identity = auth.identify(scope(secret))
    assert (identity.key_id, identity.agent_id) == (key_id, "agent-7")
    assert auth.identify(scope(secret, header="x-api-key")).key_id == key_id
    with pytest.raises(Unauthorized, match="missing API key"):
        auth.identify(scope())
    with pytest.raises(Unauthorized, match="invalid API key"):
        auth.identify(scope("sk-nope"))
    assert auth.identify(scope("adm-1")).is_admin
    assert may_use(identity, "local-fast") and not may_use(identity, "gpt-4o")
    await cache.stop()


async def test_admin_endpoints_need_the_admin_key_or_a_local_caller_when_none_is_set(
    tmp_path: Path,
) -> None:
    cache, secret, _ = await cache_with(tmp_path)
    with_admin = Authenticator(Auth(admin_key="adm-1"), cache)
    assert with_admin.require_admin(scope("adm-1")).is_admin
    with pytest.raises(Forbidden):
        with_admin.require_admin(scope(secret))
    with pytest.raises(Unauthorized):
        with_admin.require_admin(scope())
    without = Authenticator(Auth(), cache)
    assert without.require_admin(scope()).is_admin
    with pytest.raises(Forbidden, match="only local callers"):
        without.require_admin(scope(client="192.168.1.9"))
    await cache.stop()


def test_trusted_callers_speak_for_agents_and_everyone_records_project_and_channel() -> None:
    from gateway.identity import Identity

    fields = msgspec.json.decode(
        b'{"metadata": {"agent_id": "helion", "microdao_id": "dao-1", "channel_id": "tg-42"}, "user": "u1"}',
        type=dict[str, msgspec.Raw],
    )
    trusted = Identity(key_id=None, agent_id="local", trusted=True)
    who = speaking_for(trusted, scope(), fields)
    assert (who.agent_id, who.project, who.channel) == ("helion", "dao-1", "tg-42")
    assert speaking_for(trusted, scope(x_agent_id="router"), fields).agent_id == "router"
    untrusted = Identity(key_id="k1", agent_id="agent-7")
    who = speaking_for(untrusted, scope(x_agent_id="router"), fields)
    assert (who.agent_id, who.project) == ("agent-7", "dao-1")
    no_meta = msgspec.json.decode(b'{"user": "alice"}', type=dict[str, msgspec.Raw])
    assert speaking_for(trusted, scope(), no_meta).agent_id == "alice"


def test_presented_key_reads_both_protocols() -> None:
    assert presented_key(scope("k1")) == "k1"
    assert presented_key(scope("k2", header="x-api-key")) == "k2"
    assert presented_key(scope()) is None


async def test_keyless_mode_refuses_cross_site_browser_requests(tmp_path: Path) -> None:
    cache = KeyCache(str(tmp_path / "empty.db"))
    await cache.start()
    auth = Authenticator(Auth(), cache)
    same = scope(origin="http://127.0.0.1:8080", host="127.0.0.1:8080")
    assert auth.identify(same).agent_id == "local"
    assert auth.require_admin(same).is_admin
    evil = scope(origin="https://evil.example", host="127.0.0.1:8080")
    with pytest.raises(Forbidden, match="cross-site"):
        auth.identify(evil)
    with pytest.raises(Forbidden, match="cross-site"):
        auth.require_admin(evil)
    await cache.stop()
