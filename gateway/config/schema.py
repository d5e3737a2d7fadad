"""The routing document's root (``Config``) and its gateway-wide sections.

Providers, models and routing are in ``upstreams``; local roles and engines in ``engines``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from gateway.config.engines import Engines, Role
from gateway.config.observability import Capture, Telemetry
from gateway.config.peers import Peer
from gateway.config.responses import Responses
from gateway.config.upstreams import Model, Provider, Routing


class Limits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Rate limits; 0 means unlimited."""

    rpm: int = 0  # requests per minute
    tpm: int = 0  # tokens per minute (prompt + completion; estimated up front, reconciled after)
    concurrent: int = 0  # requests in flight at once


class RateLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where limit counters live and the limits that are not set per key."""

    # "memory" (this process) or a redis:// URL shared by every replica behind a load balancer.
    backend: str = "memory"
    # For keys created without limits of their own.
    default_key: Limits = Limits()
    # Per agent id, across all its keys; "*" applies to every agent without an entry.
    agents: dict[str, Limits] = {}
    # Per logical model, across all callers (protects a small local engine).
    models: dict[str, Limits] = {}
    # Which answers carry OpenAI's x-ratelimit-* headers: "refusals" (429s, which also carry
    # Retry-After) or "always" (every answer, as OpenAI's API does; six more headers per
    # answer cost about 5% of throughput at full load, see bench/governance.py).
    headers: Literal["refusals", "always"] = "refusals"


class Auth(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Who may call. With no admin key and no virtual keys, only loopback callers get in."""

    # Admin key for /engine/* and admin endpoints; set it from the environment.
    admin_key: str = ""
    # Bind a non-loopback address with no keys configured (everyone on the network gets in).
    allow_open_network: bool = False
    # Accept X-Agent-Id and metadata.agent_id from callers without a key of their own
    # (loopback callers in embedded mode) and from keys marked trusted.
    trust_agent_headers: bool = True
    # Without keys, turnout answers only requests addressed to a name of this machine (localhost,
    # 127.x, [::1]; with allow_open_network also IP addresses and local-network names), so a web
    # page cannot reach it through DNS rebinding. More names, e.g. a reverse proxy's:
    # "gw.example.com", "gw.example.com:8443" (that port only), "*.corp.lan"; "*" turns it off.
    allowed_hosts: tuple[str, ...] = ()


class Price(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None


class Usage(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The usage log: one row per request, written off the request path."""

    enabled: bool = True
    # A partial batch waits at most this long: what a crash (SIGKILL, OOM kill) can lose is the
    # rows of about this long plus the batch being committed. 0.5 lost ~0.8 s (337 rows at
    # ~415 req/s); a commit is cheap (WAL, no fsync), so ten a second cost next to nothing.
    flush_interval_seconds: float = 0.1
    batch_size: int = 2000
    # Rows held in memory while the database is unavailable; past this the oldest are counted
    # as dropped (a metric and a log line), never silently.
    max_pending: int = 1_000_000


class Server(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024
    # SQLite database for virtual keys and the usage log (WAL mode), or a
    # postgresql://user@host:port/db URL shared by replicas (gateway/dialect.py).
    database: str = "turnout.db"
    # While a streaming client waits for the first token, send an SSE comment this often.
    keepalive_seconds: float = 5.0
    # How often local providers are probed for /v1/models availability.
    probe_seconds: float = 10.0
    log_level: str = "info"
    # A client's request line and headers must arrive within this time (slow-header clients
    # are answered 408 and closed), and a request body may pause at most this long between
    # bytes. A fresh connection that sends nothing is closed after header_timeout_seconds.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    # Open client connections (WebSockets included); past this, requests get a 503.
    max_connections: int = 1024


class Plugins(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Plugins to load, by entry-point name (group ``turnout``; built-ins: memory, tools)."""

    enabled: tuple[str, ...] = ()
    # Each plugin's own section, handed to it as ``PluginContext.settings``.
    settings: dict[str, dict[str, Any]] = {}
    # A plugin's before_upstream is abandoned after this long (the request goes on without it).
    before_upstream_timeout_seconds: float = 5.0
    # after_response runs off the request path; one still running after this long is cancelled.
    after_response_timeout_seconds: float = 60.0
    # At shutdown, after_response work still running gets this long to finish.
    shutdown_grace_seconds: float = 10.0


class Layer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One layer file. Written as a plain path, a layer is required."""

    file: str
    # A missing required layer stops start-up; a missing optional one is left out quietly.
    required: bool = True


class Prompt(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A system prompt composed from layer files, in this order (seed 002)."""

    persona: str | Layer | None = None
    rules: str | Layer | None = None
    overlay: str | Layer | None = None
    task: str | Layer | None = None


class Prompts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """System prompts composed at start-up and put in front of the caller's own system prompt."""

    # Relative layer paths are read from here (itself relative to the working directory).
    layers_dir: str = "."
    # A composed prompt longer than this (in characters) stops start-up.
    max_chars: int = 32000
    # By logical model name (a local role is a model too).
    routes: dict[str, Prompt] = {}
    # By agent id; an agent's prompt wins over its model's.
    agents: dict[str, Prompt] = {}


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    server: Server = Server()
    routing: Routing = Routing()
    providers: dict[str, Provider] = {}
    models: tuple[Model, ...] = ()
    roles: dict[str, Role] = {}
    engines: Engines = Engines()
    auth: Auth = Auth()
    limits: RateLimits = RateLimits()
    usage: Usage = Usage()
    # Price table for cost estimates: logical model names, upstream model names or globs.
    prices: dict[str, Price] = {}
    plugins: Plugins = Plugins()
    prompts: Prompts = Prompts()
    # OpenTelemetry traces and request captures (gateway/config/observability.py): both off.
    telemetry: Telemetry = Telemetry()
    capture: Capture = Capture()
    # Stored Responses and compaction (gateway/config/responses.py).
    responses: Responses = Responses()
    # Other turnouts whose roles this one may send requests to (gateway/config/peers.py).
    peers: dict[str, Peer] = {}
    # Top-level sections that belong to plugins (``tools:``, ``memory:``), kept raw by the
    # loader: each is decoded and checked by the installed plugin of the same name.
    sections: dict[str, msgspec.Raw] = {}
