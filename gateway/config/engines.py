"""Local roles and how turnout runs their engines: the ``roles:`` and ``engines:`` sections."""

from __future__ import annotations

import msgspec

from gateway.config.upstreams import Reasoning

# Placeholders filled per engine start, never from the environment.
TEMPLATE_VARIABLES = frozenset({"PORT", "MODEL", "HOST", "CTX", "ROLE"})

# ``roles.X.gpus``: "auto" (placed on the GPU(s) with room, gateway/engines/placement.py), "all"
# (the engine sees every GPU and splits as it likes) or GPU indices as nvidia-smi numbers them.
AUTO_GPUS = "auto"
ALL_GPUS = "all"
GpuSpec = str | tuple[int, ...]


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
    # When several roles wait, a higher priority goes first, and it does not queue behind a
    # lower one's requests (only behind engines.min_residency_seconds); a request that waited
    # engines.max_wait_seconds goes first whatever its priority.
    priority: int = 0
    # Which GPUs its engine may use: auto, all or [0, 1] (see AUTO_GPUS).
    gpus: GpuSpec = AUTO_GPUS
    # How the role's thinking travels: think_tags, history (see config.upstreams.Reasoning).
    reasoning: Reasoning = Reasoning()


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
    # this long before the gateway stops admitting new work for the loaded role and swaps. A
    # hard bound: past it, a request's role goes next, whatever the priorities and residency.
    max_wait_seconds: float = 30.0
    # A role just loaded is not evicted for another role's queued requests before this long
    # (unless one of them waited max_wait_seconds, or a switch asks): an orchestrator on one
    # role and its sub-agents on another do not swap at every call.
    min_residency_seconds: float = 0.0
    # false: strict FIFO (no grouping by role, residency or priorities): requests are served in
    # arrival order per group, swapping whenever the next one needs another role. To compare.
    grouping: bool = True
    # At most this many MB for all local roles together (0: what the machine has free, VRAM
    # with a GPU, else RAM). For a share of a machine, or to see eviction with small models.
    memory_budget_mb: int = 0
    # Added to roles.X.priority for requests of these agents (a key's agent, or X-Agent-Id
    # from a trusted key): {orchestrator: 10} serves the orchestrator's calls first.
    agent_priority: dict[str, int] = {}
    # After return_after_idle_seconds without any request, default_role is loaded again,
    # unloading the idle roles in its way (0: never).
    default_role: str = ""
    return_after_idle_seconds: float = 0.0
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
