"""Stuck python tools cannot starve the control plane (issue 11, item 4).

A plain tool that sleeps far past its timeout keeps its thread (a thread cannot be stopped).
Those threads once lived in the loop's default executor, which key refresh shared: a revoked
key kept working for 24 s (documented: within ``refresh_seconds``, 2 s) and ``GET /v1/models``
took 14 s. Now tools run on their own bounded threads and key refresh on its own.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.keys import connect, create_key, revoke_key
from tests.gateway_server import RunningGateway, config_of, running_gateway

FUNCTIONS = "tests.tools_fixtures.functions"
# Far beyond the tool's timeout and the revocation bound below; daemon threads, so a test
# process that ends while they sleep is not held up.
STUCK_SECONDS = 20.0
# Key refresh runs every 2 s; generous for a loaded 2-core machine, still far below STUCK_SECONDS.
REVOCATION_BOUND = 8.0


def raw_config(database: Path) -> dict[str, Any]:
    return {
        "server": {"database": str(database)},
        "plugins": {"enabled": ["tools"]},
        "tools": {
            "registry": [
                {
                    "id": "stuck",
                    "executor": "python",
                    "target": f"{FUNCTIONS}:slow",
                    "timeout_seconds": 0.05,
                }
            ],
            "python_threads": 4,
        },
    }


async def call(session: aiohttp.ClientSession, gw: RunningGateway, key: str) -> Any:
    async with session.post(
        gw.url + "/v1/tools/call",
        json={"tool": "stuck", "arguments": {"seconds": STUCK_SECONDS}},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        return await response.json()


async def test_stuck_tools_neither_delay_revocation_nor_slow_the_models_list(
    tmp_path: Path,
) -> None:
    database = tmp_path / "t.db"
    connection = connect(str(database))
    secret, record = create_key(connection, "sofia", "agent:sofia")
    async with running_gateway(config_of(raw_config(database))) as gw, aiohttp.ClientSession() as s:
        answers = await asyncio.gather(*(call(s, gw, secret) for _ in range(24)))
        codes = [a["code"] for a in answers]
        assert codes.count("timeout") == 4  # the pool's four threads, all stuck now
        assert codes.count("tool_error") == 20
        refused = next(a for a in answers if a["code"] == "tool_error")
        assert "python tool threads are busy" in refused["error"]

        started = time.monotonic()
        async with s.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}) as r:
            assert r.status == 200
        assert time.monotonic() - started < 2.0

        assert revoke_key(connection, record.id)
        revoked_at = time.monotonic()
        status = 200
        while status == 200 and time.monotonic() - revoked_at < REVOCATION_BOUND:
            await asyncio.sleep(0.1)
            headers = {"Authorization": f"Bearer {secret}"}
            async with s.get(gw.url + "/v1/models", headers=headers) as r:
                status = r.status
        assert status == 401, f"revoked key still accepted after {REVOCATION_BOUND}s"
    connection.close()
