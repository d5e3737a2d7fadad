"""Keys, limits, budgets and the usage log through a real gateway, as a client meets them."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from gateway.config import Limits
from gateway.keys import connect, create_key, revoke_key
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import config_of, free_port, running_gateway

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def raw_config(fake: FakeOpenAI, database: Path, **sections: Any) -> dict[str, Any]:
    return {
        "server": {"database": str(database)},
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [
            {"name": "chat", "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "slow", "targets": [{"provider": "up", "model": "slow-first-byte"}]},
            {"name": "broken", "targets": [{"provider": "up", "model": "error-500"}]},
        ],
        "routing": {"retries": 0},
        "usage": {"flush_interval_seconds": 0.05},
        **sections,
    }


def new_key(database: Path, **options: Any) -> tuple[str, str]:
    connection = connect(str(database))
    secret, record = create_key(
        connection, options.pop("name", "test"), options.pop("agent", "agent-1"), **options
    )
    connection.close()
    return secret, record.id


def usage_rows(database: Path) -> list[dict[str, Any]]:
    connection = sqlite3.connect(database)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in connection.execute("SELECT * FROM usage ORDER BY id")]
    finally:
        connection.close()


async def wait_rows(database: Path, count: int, seconds: float = 10) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(int(seconds / 0.05)):
        try:
            rows = usage_rows(database)
        except sqlite3.OperationalError:
            rows = []
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    return rows


async def test_keys_gate_the_api_and_name_the_agent_in_the_usage_log(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    secret, key_id = new_key(database, agent="helion")
    async with running_gateway(config_of(raw_config(fake, database))) as gw:
        async with aiohttp.ClientSession() as session:
            body = {"model": "chat", "messages": USER}
            async with session.post(gw.v1 + "/chat/completions", json=body) as response:
                assert response.status == 401
                assert "missing API key" in (await response.json())["error"]["message"]
        with pytest.raises(openai.AuthenticationError, match="invalid API key"):
            await gw.openai(api_key="sk-wrong").chat.completions.create(model="chat", messages=USER)
        reply = await gw.openai(api_key=secret).chat.completions.create(
            model="chat", messages=USER, metadata={"microdao_id": "dao-7", "channel_id": "tg-1"}
        )
        assert reply.choices[0].message.content == "echo: ping"
        async with aiohttp.ClientSession() as session, session.get(gw.v1 + "/models") as response:
            assert response.status == 401
        rows = await wait_rows(database, 3)
        assert [r["status"] for r in rows] == [401, 401, 200], "refused calls are logged too"
        assert rows[2]["key_id"] == key_id and rows[2]["agent_id"] == "helion"
        assert (rows[2]["project"], rows[2]["channel"]) == ("dao-7", "tg-1")

        connection = connect(str(database))
        revoke_key(connection, key_id)
        connection.close()
        for _ in range(100):
            try:
                await gw.openai(api_key=secret).chat.completions.create(model="chat", messages=USER)
            except openai.AuthenticationError:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("a revoked key kept working")


async def test_key_model_permissions_and_budget(fake: FakeOpenAI, tmp_path: Path) -> None:
    database = tmp_path / "t.db"
    narrow, _ = new_key(database, allowed_models=("chat",))
    thrifty, _ = new_key(database, name="thrifty", budget_usd=0.000001)
    prices = {"chat": {"input": 1000.0, "output": 1000.0}}
    async with running_gateway(config_of(raw_config(fake, database, prices=prices))) as gw:
        with pytest.raises(openai.PermissionDeniedError, match="may not use model 'slow'"):
            await gw.openai(api_key=narrow).chat.completions.create(model="slow", messages=USER)
        await gw.openai(api_key=thrifty).chat.completions.create(model="chat", messages=USER)
        with pytest.raises(openai.RateLimitError) as caught:
            await gw.openai(api_key=thrifty).chat.completions.create(model="chat", messages=USER)
        assert caught.value.code == "insufficient_quota"


async def test_exactly_n_of_m_concurrent_requests_pass(fake: FakeOpenAI, tmp_path: Path) -> None:
    database = tmp_path / "t.db"
    secret, _ = new_key(database, limits=Limits(concurrent=2))
    fake.first_byte_delay = 0.5
    async with running_gateway(config_of(raw_config(fake, database))) as gw:
        client = gw.openai(api_key=secret)
        results = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(model="slow", messages=USER)
                for _ in range(6)
            ),
            return_exceptions=True,
        )
    passed = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert (len(passed), len(refused)) == (2, 4)
    assert "2 requests at once" in str(refused[0])
    assert refused[0].response.headers["retry-after"]


async def test_rpm_limit_sends_openai_ratelimit_headers(fake: FakeOpenAI, tmp_path: Path) -> None:
    database = tmp_path / "t.db"
    limits = {"agents": {"*": {"rpm": 3}}, "headers": "always"}
    async with running_gateway(config_of(raw_config(fake, database, limits=limits))) as gw:
        client = gw.openai()
        first = await client.chat.completions.with_raw_response.create(model="chat", messages=USER)
        assert first.headers["x-ratelimit-limit-requests"] == "3"
        assert first.headers["x-ratelimit-remaining-requests"] == "2"
        for _ in range(2):
            await client.chat.completions.create(model="chat", messages=USER)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="chat", messages=USER)
        headers = caught.value.response.headers
        assert headers["x-ratelimit-remaining-requests"] == "0" and int(headers["retry-after"]) >= 1
        async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
            assert "turnout_ratelimit_rejections_total" in await response.text()


async def test_by_default_only_refusals_carry_ratelimit_headers(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    limits = {"agents": {"*": {"rpm": 1, "tpm": 100000}}}
    async with running_gateway(config_of(raw_config(fake, database, limits=limits))) as gw:
        client = gw.openai()
        first = await client.chat.completions.with_raw_response.create(model="chat", messages=USER)
        assert not [h for h in first.headers if h.startswith("x-ratelimit-")]
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="chat", messages=USER)
        headers = caught.value.response.headers
        assert headers["x-ratelimit-limit-requests"] == "1"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) > 0


async def test_a_usage_row_for_every_request_however_it_ended(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    fake.chunk_delay = 0.05
    config = raw_config(fake, database)
    config["models"].append(
        {
            "name": "fallback",
            "targets": [
                {"provider": "up", "model": "error-503"},
                {"provider": "up", "model": "ok"},
            ],
        }
    )
    async with running_gateway(config_of(config)) as gw:
        client = gw.openai()
        await client.chat.completions.create(model="chat", messages=USER)
        stream = await client.chat.completions.create(model="chat", messages=USER, stream=True)
        async for _ in stream:
            pass
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="broken", messages=USER)
        await client.chat.completions.create(model="fallback", messages=USER)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=USER)
        # A streaming client that leaves after a few chunks.
        async with aiohttp.ClientSession() as session:
            body = {"model": "chat", "messages": USER, "stream": True}
            async with session.post(gw.v1 + "/chat/completions", json=body) as response:
                await response.content.readline()
                await response.content.readline()
        rows = await wait_rows(database, 6)
    assert len(rows) == 6
    by_status = [(r["model"], r["status"]) for r in rows]
    assert by_status[:5] == [
        ("chat", 200),
        ("chat", 200),
        ("broken", 502),
        ("fallback", 200),
        ("-", 404),
    ]
    assert rows[1]["stream"] == 1 and rows[1]["completion_tokens"] > 0 and rows[1]["ttft_ms"] > 0
    assert "error-503" in rows[3]["notes"]
    disconnected = rows[5]
    assert disconnected["status"] == 499 and "disconnected" in disconnected["notes"]
    assert disconnected["estimated"] == 1 and disconnected["completion_tokens"] >= 0


def serve(config: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    path = Path(tempfile.mkdtemp()) / "routing.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    import urllib.request

    for _ in range(300):
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.03)
    raise AssertionError("turnout did not start")


async def test_sigterm_with_requests_in_flight_loses_no_usage_row(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    fake.first_byte_delay = 1.0
    port = free_port()
    process = serve(raw_config(fake, database), port)
    try:
        wait_ready(port, process)
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"

            async def one(model: str) -> int:
                async with session.post(url, json={"model": model, "messages": USER}) as response:
                    await response.read()
                    return response.status

            quick = [await one("chat") for _ in range(5)]
            slow = [asyncio.create_task(one("slow")) for _ in range(4)]
            await asyncio.sleep(0.4)
            process.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*slow, return_exceptions=True)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert quick == [200] * 5
    assert statuses == [200] * 4, "in-flight requests finish during a graceful shutdown"
    assert len(usage_rows(database)) == 9


def test_a_keyless_gateway_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    config = {"server": {"database": str(tmp_path / "t.db")}}
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(path),
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stdout + result.stderr


async def test_admin_endpoints_need_the_admin_key_once_one_is_set(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    config = raw_config(fake, database, auth={"admin_key": "adm-secret"})
    secret, _ = new_key(database)
    async with running_gateway(config_of(config)) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/engine/status") as response:
                assert response.status == 401
            async with session.get(
                gw.url + "/v1/usage", headers={"Authorization": f"Bearer {secret}"}
            ) as response:
                assert response.status == 403
            async with session.get(
                gw.url + "/engine/status", headers={"Authorization": "Bearer adm-secret"}
            ) as response:
                assert response.status == 200
            async with session.get(gw.url + "/health") as response:
                assert response.status == 200
            async with session.get(gw.url + "/metrics") as response:
                assert response.status == 200


async def test_two_gateways_share_one_set_of_limits_through_redis(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    from tests.redis_server import RedisServer, redis_server_binary

    if redis_server_binary() is None:
        pytest.skip("redis-server not installed: apt-get install -y redis-server")
    with RedisServer() as redis:
        config = raw_config(
            fake, tmp_path / "a.db", limits={"backend": redis.url, "agents": {"*": {"rpm": 10}}}
        )
        ports = [free_port(), free_port()]
        processes = []
        for port, name in zip(ports, ("a", "b"), strict=True):
            config["server"]["database"] = str(tmp_path / f"{name}.db")
            processes.append(serve(config, port))
        try:
            for port, process in zip(ports, processes, strict=True):
                wait_ready(port, process)
            async with aiohttp.ClientSession() as session:

                async def one(port: int) -> int:
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    async with session.post(
                        url, json={"model": "chat", "messages": USER}
                    ) as response:
                        await response.read()
                        return response.status

                # 15 requests to each replica, interleaved and concurrent: 10 pass in all.
                statuses = await asyncio.gather(*(one(ports[i % 2]) for i in range(30)))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
    assert statuses.count(200) == 10 and statuses.count(429) == 20
