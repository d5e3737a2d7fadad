"""The tools plugin's Prometheus series, on the gateway's own registry (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ToolMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "turnout_tool_calls",
            "Tool calls, by tool id and outcome (ok or an error code).",
            ("tool", "outcome"),
            registry=registry,
        )
        self.duration = Histogram(
            "turnout_tool_call_duration_seconds",
            "Time a tool took to run, by executor kind.",
            ("executor",),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.agent_rounds = Counter(
            "turnout_agent_rounds",
            "Model calls made by the server-side agent loop, by kind (tools or final).",
            ("kind",),
            registry=registry,
        )
        self.mcp_up = Gauge(
            "turnout_mcp_server_up",
            "1 while turnout holds a working connection to the MCP server.",
            ("server",),
            registry=registry,
        )
