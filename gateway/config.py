"""routing.yaml → typed, validated msgspec Structs.

Defaults live here and only here. A validation error names the key path (``models[2].targets[0].provider``)
and what was expected, so ``turnout check`` can print something a user can act on.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
import yaml

from gateway.errors import ConfigError

Balance = Literal["ordered", "weighted", "least_inflight"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
    # The largest whole non-stream answer accepted from the upstream (after decoding).
    max_body_bytes: int = 64 * 1024 * 1024


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


# Placeholders filled per engine start, never from the environment.
TEMPLATE_VARIABLES = frozenset({"PORT", "MODEL", "HOST", "CTX", "ROLE"})


class Role(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A local model turnout loads on demand: one engine process (or one Ollama model)."""

    # An engine kind's name (gateway/engines/kinds.py): built in (llamacpp, mlx, ollama,
    # external) or registered by a plugin; checked against the registered kinds on load.
    engine: str
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
    # Top-level sections that belong to plugins (``tools:``, ``memory:``), kept raw by the
    # loader: each is decoded and checked by the installed plugin of the same name.
    sections: dict[str, msgspec.Raw] = {}


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
    raw, sections = _plugin_sections(raw, source)
    try:
        config = msgspec.convert(raw, type=Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_readable(str(exc))}") from None
    if sections:
        config = msgspec.structs.replace(config, sections=sections)
    # Imported here: the kinds' registry is built from this module's types (and plugins).
    from gateway.engines.registry import kinds_for

    kinds = kinds_for(config)
    problems = kinds.role_problems(config.roles) + validate_roles(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    config = expand_roles(config, kinds.upstream_model)
    problems = validate(config)
    try:
        problems += _section_problems(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


# The entry-point group plugins are found in (gateway/plugins/manager.py loads them).
_PLUGINS = "turnout"


def _plugin_sections(
    raw: dict[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, msgspec.Raw]]:
    """Splits off the top-level sections that belong to installed plugins, kept raw.

    A section belongs to the plugin of its name (``tools:`` to the tools plugin); any other
    key the gateway does not know is refused, as a typo.
    """
    unknown = [k for k in raw if k not in Config.__struct_fields__]
    if not unknown:
        return raw, {}
    installed = {entry.name for entry in entry_points(group=_PLUGINS)}
    for key in unknown:
        if key not in installed:
            raise ConfigError(f"{source}: (top level): unknown key `{key}`")
    known = {k: v for k, v in raw.items() if k not in unknown}
    return known, {k: msgspec.Raw(msgspec.json.encode(raw[k])) for k in unknown}


def _section_problems(config: Config) -> list[str]:
    """Each plugin section checked by its plugin's ``check_config`` (imported for that only)."""
    if not config.sections:
        return []
    problems: list[str] = []
    entries = {e.name: e for e in entry_points(group=_PLUGINS) if e.name in config.sections}
    for name in config.sections:
        entry = entries[name]
        try:
            target = entry.load()
        except Exception as exc:
            # A plugin left off need not import (memory without its extra): nothing reads
            # its section then. One that is enabled would stop the gateway: say so now.
            if name in config.plugins.enabled:
                problems.append(f"{name}: plugin {name!r} ({entry.value}) failed to load: {exc!r}")
            continue
        plugin = target() if isinstance(target, type) else target
        check = getattr(plugin, "check_config", None)
        if check is not None:
            problems.extend(check(config))
    return problems


T = TypeVar("T")


def section(config: Config, name: str, kind: type[T]) -> T:
    """A plugin's own section, decoded as ``kind``; its defaults when routing.yaml has none.

    A section that does not fit raises a ConfigError naming the key path (``tools.registry[0]``).
    """
    raw = config.sections.get(name)
    if raw is None:
        return kind()
    try:
        return msgspec.json.decode(raw, type=kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_readable(str(exc), name)) from None


ROLE_PREFIX = "role:"


def role_provider_name(role: str) -> str:
    return ROLE_PREFIX + role


def role_upstream_model(name: str, role: Role) -> str:
    """The ``model`` a request to this role's engine carries.

    Loading fills ``upstream_model`` in from the role's engine kind (``EngineKind.upstream_model``)
    where the role leaves it empty.
    """
    return role.upstream_model or role.model


def expand_roles(config: Config, upstream_model: Callable[[str, Role], str]) -> Config:
    """Make roles routable: ``role:`` targets become providers, and every role is a model too.

    A role named ``coder`` answers ``model: coder`` (and its aliases) unless a model of that
    name exists; such implicit models are ``local_only``: they are the local engine, by definition.
    ``upstream_model`` names the model each role's engine expects (its kind decides).
    """
    config = msgspec.structs.replace(
        config,
        roles={
            name: msgspec.structs.replace(role, upstream_model=upstream_model(name, role))
            for name, role in config.roles.items()
        },
    )

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
        # What a role's engine kind demands of it is checked by the kind (EngineKinds).
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
    if timeouts.max_body_bytes < 1024:
        problems.append(f"{where}.max_body_bytes: expected at least 1024 bytes")
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


def _readable(message: str, section: str = "") -> str:
    """msgspec says ``Expected `int`, got `str` - at `$.server.port```; lead with the path instead.

    ``section``: the top-level key the decoded document sat under (a plugin's own section).
    """
    match = re.search(r" - at `\$\.?(.*)`$", message)
    if not match and not section:
        return message
    path = ".".join(p for p in (section, match.group(1) if match else "") if p) or "(top level)"
    what = message[: match.start()] if match else message
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
