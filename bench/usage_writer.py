"""Usage writer throughput, and what it costs the request path.

    .venv/bin/python -m bench.usage_writer [--rows 200000] [--rate 2000] [--seconds 5]

Everything runs in one event loop (uvloop when installed, as ``turnout serve`` does) against a
real SQLite file in a temporary directory, with the shipped defaults (batch 2000, flush every
0.1 s) and a small price table, so the writer prices every row as it would in production.

burst   ``--rows`` rows submitted back to back, then the time until the last one is committed:
        rows/s (the issue's target: at least 10,000) and submit()'s cost per call in µs.
steady  ``--rate`` rows/s offered for ``--seconds`` in 1 ms ticks, as requests would finish,
        while a ticker measures how late the event loop runs (the writer's loop-side work,
        turning records into rows, is the only part that competes with requests) and the
        writer's lag is sampled. The same run with no usage log at all is the baseline: the
        lateness this machine shows anyway.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.config import Config, Price, Server
from gateway.metrics import Metrics
from gateway.usage import UsageRecord, UsageWriter

TARGET_ROWS_PER_S = 10_000

PRICES = {
    "smart": Price(input=3.0, output=15.0, cached_input=0.3),
    "gpt-4o*": Price(input=2.5, output=10.0),
    "claude-*": Price(input=3.0, output=15.0),
}
MODELS = (("smart", "claude-sonnet-4"), ("fast", "qwen3-8b"), ("chat", "gpt-4o-mini"))


def records(count: int, start: int = 0) -> list[UsageRecord]:
    now = time.time()
    out = []
    for i in range(start, start + count):
        model, upstream = MODELS[i % len(MODELS)]
        out.append(
            UsageRecord(
                ts=now,
                request_id=f"req-{i:012d}",
                key_id=f"key-{i % 17}",
                agent_id=f"agent-{i % 5}",
                project="bench",
                ingress="chat",
                model=model,
                provider="bench",
                upstream_model=upstream,
                status=200,
                stream=i % 2 == 0,
                prompt_tokens=1200 + i % 300,
                completion_tokens=200 + i % 50,
                cached_tokens=800,
                ttft_ms=120.5,
                duration_ms=2400.25,
                overhead_ms=0.35,
            )
        )
    return out


async def open_writer(directory: Path) -> tuple[UsageWriter, Metrics]:
    metrics = Metrics()
    config = Config(server=Server(database=str(directory / "turnout.db")), prices=PRICES)
    return await UsageWriter.open(config, metrics), metrics


async def drained(writer: UsageWriter) -> None:
    """Until every submitted row is committed (polled each millisecond)."""
    for _ in range(600_000):
        if not writer.depth():
            return
        await asyncio.sleep(0.001)
    raise TimeoutError("the usage writer did not catch up in 10 minutes")


async def burst(directory: Path, count: int) -> dict[str, Any]:
    writer, metrics = await open_writer(directory)
    batch = records(count)
    started = time.perf_counter()
    for record in batch:
        writer.submit(record)
    submitted = time.perf_counter()
    await drained(writer)
    flushed = time.perf_counter()
    await writer.stop()

    # submit() one call at a time, for its tail (timer overhead included, so an upper bound).
    writer, _ = await open_writer(directory)
    costs = []
    for record in records(20_000, start=count):
        t = time.perf_counter_ns()
        writer.submit(record)
        costs.append(time.perf_counter_ns() - t)
    await writer.stop()
    costs.sort()
    written = metrics.registry.get_sample_value("turnout_usage_rows_written_total") or 0
    return {
        "rows": count,
        "rows_written": int(written),
        "seconds": round(flushed - started, 3),
        "rows_per_s": round(count / (flushed - started)),
        "submit_us_mean": round((submitted - started) / count * 1e6, 3),
        "submit_us_p50": round(costs[len(costs) // 2] / 1000, 3),
        "submit_us_p99": round(costs[int(len(costs) * 0.99)] / 1000, 3),
        "submit_us_max": round(costs[-1] / 1000, 3),
    }


async def steady(directory: Path, rate: int, seconds: float, log: bool) -> dict[str, Any]:
    """Offer ``rate`` rows/s; ``log=False`` is the baseline: the same loop with no usage log."""
    writer, metrics = await open_writer(directory)
    sink: list[UsageRecord] = []
    submit = writer.submit if log else sink.append
    per_tick = max(1, rate // 1000)
    pool = records(per_tick * int(seconds * 1000))
    lateness: list[float] = []
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        # How late a 1 ms sleep wakes: what a request's next step would wait for the loop.
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t - 0.001)
            lags.append(writer.lag())

    watch = asyncio.create_task(ticker())
    started = time.perf_counter()
    for tick in range(int(seconds * 1000)):
        for record in pool[tick * per_tick : (tick + 1) * per_tick]:
            submit(record)
        delay = started + (tick + 1) / 1000 - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    offered_for = time.perf_counter() - started
    await drained(writer)
    stop.set()
    await watch
    await writer.stop()
    lateness.sort()
    result = {
        "offered_rows_per_s": round(len(pool) / offered_for),
        "loop_late_ms_p50": round(lateness[len(lateness) // 2] * 1000, 3),
        "loop_late_ms_p99": round(lateness[int(len(lateness) * 0.99)] * 1000, 3),
        "loop_late_ms_max": round(lateness[-1] * 1000, 3),
    }
    if log:
        written = metrics.registry.get_sample_value("turnout_usage_rows_written_total") or 0
        result |= {
            "rows_written": int(written),
            "lag_s_max": round(max(lags), 3),
            "lag_s_mean": round(statistics.fmean(lags), 3),
        }
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="turnout-usage-bench-") as tmp:
        result_burst = await burst(Path(tmp) / "burst", args.rows)
        result_steady = await steady(Path(tmp) / "steady", args.rate, args.seconds, log=True)
        baseline = await steady(Path(tmp) / "baseline", args.rate, args.seconds, log=False)
    return {
        "burst": result_burst,
        "steady": result_steady,
        "steady_without_usage_log": baseline,
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "meets_target": result_burst["rows_per_s"] >= TARGET_ROWS_PER_S,
        "loop": loop_name(),
    }


def loop_name() -> str:
    return type(asyncio.get_event_loop_policy()).__module__.split(".")[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=2_000, help="steady: rows/s offered")
    parser.add_argument("--seconds", type=float, default=5.0, help="steady: for how long")
    parsed = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main(parsed)), indent=2))
