"""Sections for watching the gateway from outside: OpenTelemetry traces and request captures.

Both are off by default and cost a request nothing then (one attribute test each).
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Otlp(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where spans go over OTLP/HTTP (protobuf)."""

    # The collector's base URL, e.g. http://localhost:4318 (spans go to its /v1/traces).
    # Setting it turns tracing on. OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT win over it.
    endpoint: str = ""
    # Sent with every export (e.g. an API key for a hosted backend); OTEL_EXPORTER_OTLP_HEADERS
    # wins over these.
    headers: dict[str, str] = {}


class Telemetry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """OpenTelemetry traces, one span per request (GenAI semantic conventions).

    The standard variables work as in any OpenTelemetry SDK and win over this section:
    OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER=otlp turn export on,
    OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true turn it off, OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and OTEL_BSP_* are honoured.
    """

    otlp: Otlp = Otlp()
    # The service.name resource attribute (OTEL_SERVICE_NAME wins).
    service_name: str = "turnout"
    # Where spans are encoded and exported: "process", a worker process beside the gateway
    # (its event loop only notes a few values per request); "inline", on the event loop,
    # batched (no second process, but the work competes with requests); "auto", process on a
    # machine with 2 or more CPUs, else inline. Measured on 2 cores (bench/telemetry.py), the
    # worker costs the loop +1.8% instructions per request against inline's +8.6%, and the
    # whole process tree less CPU than inline costs the loop alone.
    worker: Literal["auto", "process", "inline"] = "auto"


class Capture(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The last few request and response bodies, for debugging (GET /v1/captures, dashboard).

    Keys and authorization headers are redacted; bodies are cut at ``max_bytes``.
    """

    enabled: bool = False
    # Only requests for these logical models, or made with these key ids; both empty: all.
    models: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    # How many exchanges are kept (the oldest go first).
    max_entries: int = 50
    # Per body (request and response each); the rest is dropped and the capture marked cut.
    max_bytes: int = 65536


def capture_problems(capture: Capture) -> list[str]:
    problems = []
    if capture.max_entries < 1:
        problems.append("capture.max_entries: expected a number >= 1")
    if capture.max_bytes < 1:
        problems.append("capture.max_bytes: expected a number of bytes >= 1")
    return problems
