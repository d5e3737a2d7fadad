"""Whether traces are exported, where and how: routing.yaml's ``telemetry`` section under the
standard OTEL_* variables, which win (as the OpenTelemetry specification has it).

Pure: the environment is passed in. Unlike a plain SDK (whose default exporter is otlp),
turnout exports only when asked: an endpoint set in either place, or OTEL_TRACES_EXPORTER=otlp.
The variables read are the specification's for OTLP/HTTP traces: endpoint, headers, timeout,
compression and TLS files (each with its ``_TRACES_`` form first), the service name and
resource attributes, the sampler and the batch processor's delay and sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from gateway.config.observability import Telemetry

# OTLP/HTTP's default (the collector's), for OTEL_TRACES_EXPORTER=otlp with no endpoint.
DEFAULT_ENDPOINT = "http://localhost:4318"
_SAMPLERS = ("always_on", "always_off", "traceidratio")


@dataclass(frozen=True, slots=True)
class Export:
    """Traces go out over OTLP/HTTP (protobuf) to ``endpoint``, the full …/v1/traces URL."""

    endpoint: str
    headers: dict[str, str] = field(default_factory=dict)
    # The Resource's attributes (service.name and OTEL_RESOURCE_ATTRIBUTES).
    resource: dict[str, str] = field(default_factory=dict)
    timeout_seconds: float = 10.0
    gzip: bool = False
    # TLS: a CA bundle, and a client certificate and key (mutual TLS); "" when unset.
    certificate: str = ""
    client_certificate: str = ""
    client_key: str = ""
    # Share of requests traced (OTEL_TRACES_SAMPLER): 1.0 all, 0.0 none.
    sample_ratio: float = 1.0
    # The batch processor's (OTEL_BSP_*): how often a batch goes, how big, how much may wait.
    schedule_delay_seconds: float = 5.0
    max_batch: int = 512
    max_queue: int = 2048


def export_of(section: Telemetry, env: Mapping[str, str]) -> Export | None:
    """How to export traces, or None when tracing is off. Assumes ``problems`` found none."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = _exporters(env)
    env_endpoint = _var(env, "ENDPOINT")
    if exporters is not None:
        if "otlp" not in exporters:
            return None
    elif not env_endpoint and not section.otlp.endpoint:
        return None
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    endpoint = traces_endpoint or traces_url(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or section.otlp.endpoint
        or DEFAULT_ENDPOINT
    )
    headers_var = _var(env, "HEADERS")
    return Export(
        endpoint=endpoint,
        headers=_pairs(headers_var) if headers_var else dict(section.otlp.headers),
        resource=_resource(section, env),
        timeout_seconds=_number(_var(env, "TIMEOUT"), 10000) / 1000,
        gzip=_var(env, "COMPRESSION").lower() == "gzip",
        certificate=_var(env, "CERTIFICATE"),
        client_certificate=_var(env, "CLIENT_CERTIFICATE"),
        client_key=_var(env, "CLIENT_KEY"),
        sample_ratio=_ratio(env),
        schedule_delay_seconds=_number(env.get("OTEL_BSP_SCHEDULE_DELAY", ""), 5000) / 1000,
        max_batch=max(1, int(_number(env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", ""), 512))),
        max_queue=max(1, int(_number(env.get("OTEL_BSP_MAX_QUEUE_SIZE", ""), 2048))),
    )


def traces_url(base: str) -> str:
    """The spec's rule for a base endpoint: traces are posted to its ``/v1/traces``."""
    return base.rstrip("/") + "/v1/traces"


def problems(section: Telemetry, env: Mapping[str, str]) -> list[str]:
    """What would stop tracing from working as asked, by the key or variable that asks it."""
    found: list[str] = []
    endpoint = section.otlp.endpoint
    if endpoint and not endpoint.startswith(("http://", "https://")):
        found.append(f"telemetry.otlp.endpoint: expected an http(s) URL, got {endpoint!r}")
    exporters = _exporters(env) or set()
    unsupported = sorted(exporters - {"otlp", "none"})
    # Only when it would leave the traces asked for unsent: "otlp,console" still exports.
    if unsupported and "otlp" not in exporters:
        found.append(
            f"OTEL_TRACES_EXPORTER: turnout exports traces with otlp only, not {unsupported}"
        )
    for suffix in ("PROTOCOL",):
        protocol = _var(env, suffix)
        if protocol and protocol != "http/protobuf":
            found.append(
                f"{_name_of(env, suffix)}: turnout sends OTLP over http/protobuf, not {protocol!r}"
            )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = env.get(name, "").strip()
        if value and not value.startswith(("http://", "https://")):
            found.append(f"{name}: expected an http(s) URL, got {value!r}")
    for name in (
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_MAX_QUEUE_SIZE",
    ):
        if _number(env.get(name, ""), 1) <= 0:
            found.append(f"{name}: expected a number > 0, got {env[name]!r}")
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower().removeprefix("parentbased_")
    if sampler and sampler not in _SAMPLERS:
        found.append(
            f"OTEL_TRACES_SAMPLER: expected one of {', '.join(_SAMPLERS)} "
            f"(or parentbased_ ones), got {sampler!r}"
        )
    return found


def _var(env: Mapping[str, str], suffix: str) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<suffix>, else OTEL_EXPORTER_OTLP_<suffix>."""
    return env.get(_name_of(env, suffix), "").strip()


def _name_of(env: Mapping[str, str], suffix: str) -> str:
    specific = f"OTEL_EXPORTER_OTLP_TRACES_{suffix}"
    return specific if env.get(specific, "").strip() else f"OTEL_EXPORTER_OTLP_{suffix}"


def _exporters(env: Mapping[str, str]) -> set[str] | None:
    value = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not value:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _pairs(text: str) -> dict[str, str]:
    """The spec's ``key1=value1,key2=value2`` lists (percent-encoded values)."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def _resource(section: Telemetry, env: Mapping[str, str]) -> dict[str, str]:
    resource = {
        "service.name": section.service_name,
        "telemetry.sdk.name": "turnout",
        "telemetry.sdk.language": "python",
    }
    resource.update(_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    service = env.get("OTEL_SERVICE_NAME", "").strip()
    if service:
        resource["service.name"] = service
    return resource


def _ratio(env: Mapping[str, str]) -> float:
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower().removeprefix("parentbased_")
    if sampler == "always_off":
        return 0.0
    if sampler == "traceidratio":
        return min(1.0, max(0.0, _number(env.get("OTEL_TRACES_SAMPLER_ARG", ""), 1.0)))
    return 1.0


def _number(text: str, default: float) -> float:
    try:
        return float(text) if text.strip() else default
    except ValueError:
        return -1.0
