"""bench.proxy's derived numbers (added latency, ratios), its targets and its printed report."""

from __future__ import annotations

from typing import Any

from bench.cells import CONNECTIONS, KINDS, Cells, cell_key
from bench.report import Target, ratio, table, targets_table

# The minimal proxy (bench/mini_proxy.py) that issue 13's throughput targets are ratios to.
MINI = "asgi-aiohttp"


def _get(cells: dict[str, Cells], stack: str, key: str, field: str) -> float | None:
    value = cells.get(stack, {}).get(key, {}).get(field)
    return float(value) if value is not None else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def derive(cells: dict[str, Cells], ttfts: dict[str, dict[str, float]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for kind in KINDS:
        key = cell_key(kind, 1)
        for q in ("p50_ms", "p99_ms"):
            d[f"added_{q}_{kind}_c1"] = _minus(
                _get(cells, "turnout", key, q), _get(cells, "direct", key, q)
            )
    for kind in KINDS:
        for c in CONNECTIONS:
            key = cell_key(kind, c)
            t = _get(cells, "turnout", key, "rps")
            d[f"ratio_turnout_direct_{key}"] = ratio(t, _get(cells, "direct", key, "rps"))
            d[f"ratio_turnout_mini_{key}"] = ratio(t, _get(cells, MINI, key, "rps"))
            # What turnout's event loop spends per request beyond the minimal proxy's.
            d[f"cpu_us_added_over_mini_{key}"] = _minus(
                _get(cells, "turnout", key, "cpu_us_per_req"),
                _get(cells, MINI, key, "cpu_us_per_req"),
            )
            d[f"ratio_turnout_litellm_{key}"] = ratio(t, _get(cells, "litellm", key, "rps"))
    if "turnout" in ttfts and "direct" in ttfts:
        d["ttft_added_p50_ms"] = _minus(ttfts["turnout"]["p50_ms"], ttfts["direct"]["p50_ms"])
        d["ttft_added_p99_ms"] = _minus(ttfts["turnout"]["p99_ms"], ttfts["direct"]["p99_ms"])
    return d


def targets(results: dict[str, Any]) -> list[Target]:
    d = results["derived"]
    rss, ready = results.get("rss") or {}, results.get("ready") or {}
    return [
        Target(
            f"non-stream req/s at c=64 / {MINI}'s",
            d.get("ratio_turnout_mini_json@64"),
            0.70,
            "x",
            at_least=True,
        ),
        Target(
            f"20-chunk stream req/s at c=64 / {MINI}'s",
            d.get("ratio_turnout_mini_stream@64"),
            0.60,
            "x",
            at_least=True,
        ),
        Target("added latency p50 at c=1 (non-stream)", d.get("added_p50_ms_json_c1"), 0.5, "ms"),
        Target("added latency p99 at c=1 (non-stream)", d.get("added_p99_ms_json_c1"), 2, "ms"),
        Target("streaming TTFT added (p50)", d.get("ttft_added_p50_ms"), 1, "ms"),
        Target(f"RSS after {rss.get('requests', 0):,} requests", rss.get("rss_mb"), 80, "MB"),
        Target(
            f"turnout serve ready, plugins {ready.get('plugins', [])} "
            f"(median of {len(ready.get('runs_s', []))})",
            ready.get("median_s"),
            1,
            "s",
        ),
    ]


def cell_rows(cells: dict[str, Cells]) -> list[list[object]]:
    rows: list[list[object]] = []
    for kind in KINDS:
        for c in CONNECTIONS:
            key = cell_key(kind, c)
            for stack, by_cell in cells.items():
                cell = by_cell.get(key)
                if cell is None:
                    continue
                rows.append(
                    [
                        stack,
                        kind,
                        c,
                        cell["rps"],
                        cell["p50_ms"],
                        cell["p99_ms"],
                        cell["cpu_us_per_req"],
                        cell["requests"],
                        cell["errors"],
                        cell.get("other_cores_busy"),
                        ratio(cell["rps"], _get(cells, "direct", key, "rps")),
                        ratio(cell["rps"], _get(cells, MINI, key, "rps")),
                    ]
                )
    return rows


def ratio_rows(d: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    for kind in KINDS:
        for c in CONNECTIONS:
            key = cell_key(kind, c)
            rows.append(
                [
                    key,
                    d.get(f"ratio_turnout_direct_{key}"),
                    d.get(f"ratio_turnout_mini_{key}"),
                    d.get(f"ratio_turnout_litellm_{key}"),
                    d.get(f"cpu_us_added_over_mini_{key}"),
                ]
            )
    return rows


def render(results: dict[str, Any]) -> str:
    d = results["derived"]
    parts = [
        f"turnout: {results['turnout_build']}, "
        f"{'shipped defaults' if results['settings'].get('ungoverned') else 'governed'}; "
        f"wrk 1 thread, {results['settings']['seconds']:g} s per cell; "
        "'other load' = cores used by processes outside the benchmark",
        "",
        table(
            [
                "stack",
                "kind",
                "conns",
                "req/s",
                "p50 ms",
                "p99 ms",
                "CPU µs/req",
                "requests",
                "errors",
                "other load",
                "/direct",
                f"/{MINI}",
            ],
            cell_rows(results["cells"]),
        ),
        "",
        table(
            [
                "throughput",
                "turnout/direct",
                f"turnout/{MINI}",
                "turnout/litellm",
                f"CPU µs/req over {MINI}",
            ],
            ratio_rows(d),
        ),
        "",
        table(
            ["added by turnout at c=1", "p50 ms", "p99 ms"],
            [
                [
                    "non-stream (whole response)",
                    d.get("added_p50_ms_json_c1"),
                    d.get("added_p99_ms_json_c1"),
                ],
                [
                    "stream (whole stream)",
                    d.get("added_p50_ms_stream_c1"),
                    d.get("added_p99_ms_stream_c1"),
                ],
                [
                    "stream time to first token",
                    d.get("ttft_added_p50_ms"),
                    d.get("ttft_added_p99_ms"),
                ],
            ],
        ),
        "",
        table(
            ["TTFT (aiohttp, sequential)", "n", "p50 ms", "p99 ms", "mean ms"],
            [
                [name, t["n"], t["p50_ms"], t["p99_ms"], t["mean_ms"]]
                for name, t in results["ttft"].items()
            ],
        ),
        "",
        targets_table(targets(results)),
    ]
    return "\n".join(parts)
