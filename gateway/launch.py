"""``turnout launch``: start a coding agent pointed at a running turnout, for one session.

Each client is one small registry entry: the binary it runs, how to install it, and a pure
function that turns a ``Session`` (gateway URL, key, models by role, context windows) into a
``Plan`` (arguments, environment, temporary files). Nothing the user owns is written: every
setting travels in the child's environment or command line (Claude Code's env variables,
Codex's ``-c key=value`` overrides, opencode's ``OPENCODE_CONFIG_CONTENT``), and the one file a
client needs (aider's model metadata) lives in a temporary folder removed when the client exits.

Models come from the running gateway's ``GET /v1/models``; a model's context window from that
answer (``context_window``) when the gateway publishes it, else from the routing file's role,
else it stays unset and the client keeps its own default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any

# The key the client sends when the caller has none: a gateway without keys (embedded mode)
# accepts any string, and clients refuse to start without one.
KEYLESS = "turnout-keyless"
# Preferred models for the session's main and small roles, in order, when --model is not
# given: the shipped routing.yaml's agent model (local coder with a cloud fallback), the coder
# role itself, then the small fast role.
MAIN_PREFERENCES = ("agent-coder", "coder")
SMALL_PREFERENCES = ("fast",)
# Replaced in a plan's arguments and environment by the session's temporary folder.
TEMP_DIR = "{turnout_tmp}"
# Fields of a /v1/models entry that may carry the context window (turnout's own, then the
# Anthropic Models API shape's).
CONTEXT_FIELDS = ("context_window", "max_input_tokens", "context_length")


@dataclass(frozen=True, slots=True)
class Session:
    """What a client needs to know about the gateway; built once, read by every plan."""

    url: str  # the gateway, without /v1
    key: str
    main: str
    small: str
    contexts: Mapping[str, int] = field(default_factory=dict)

    def context(self, model: str) -> int | None:
        return self.contexts.get(model)


@dataclass(frozen=True, slots=True)
class Plan:
    """How to start one client: ``{turnout_tmp}`` in argv/env names the temporary folder."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    unset: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    binary: str
    install: str
    plan: Callable[[Session, Sequence[str]], Plan]
    about: str


# ---------------------------------------------------------------- the clients (pure)


def claude_plan(session: Session, extra: Sequence[str]) -> Plan:
    env = {
        "ANTHROPIC_BASE_URL": session.url,
        # Sent as `Authorization: Bearer`; unlike ANTHROPIC_API_KEY it never asks the user
        # to approve overriding a subscription login.
        "ANTHROPIC_AUTH_TOKEN": session.key,
        "ANTHROPIC_MODEL": session.main,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": session.main,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": session.main,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": session.small,
        "ANTHROPIC_SMALL_FAST_MODEL": session.small,  # Claude Code 1.x's name for haiku
        "CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    window = session.context(session.main)
    if window:
        env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] = str(window)
    # A user's own Anthropic key would be sent as x-api-key beside our token.
    return Plan(argv=("claude", *extra), env=env, unset=("ANTHROPIC_API_KEY",))


def codex_plan(session: Session, extra: Sequence[str]) -> Plan:
    # `-c key=value` overrides (TOML values) apply to this run only: ~/.codex is untouched.
    settings: list[tuple[str, object]] = [
        ("model_provider", "turnout"),
        ("model", session.main),
        ("model_providers.turnout.name", "turnout"),
        ("model_providers.turnout.base_url", session.url + "/v1"),
        ("model_providers.turnout.env_key", "TURNOUT_API_KEY"),
        ("model_providers.turnout.wire_api", "responses"),
        # One socket per session (/v1/responses over WebSocket): each step sends only its new
        # items after previous_response_id, not the whole history again.
        ("model_providers.turnout.supports_websockets", True),
        ("check_for_update_on_startup", False),
    ]
    window = session.context(session.main)
    if window:
        settings.append(("model_context_window", window))
    argv: list[str] = ["codex"]
    for key, value in settings:
        argv += ["-c", f"{key}={toml_value(value)}"]
    return Plan(argv=(*argv, *extra), env={"TURNOUT_API_KEY": session.key})


def opencode_plan(session: Session, extra: Sequence[str]) -> Plan:
    models: dict[str, Any] = {}
    for name in dict.fromkeys((session.main, session.small)):
        entry: dict[str, Any] = {"name": name}
        window = session.context(name)
        if window:
            entry["limit"] = {"context": window, "output": min(8192, max(window // 4, 256))}
        models[name] = entry
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "turnout": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "turnout",
                "options": {"baseURL": session.url + "/v1", "apiKey": "{env:TURNOUT_API_KEY}"},
                "models": models,
            }
        },
        "model": f"turnout/{session.main}",
        "small_model": f"turnout/{session.small}",
        "autoupdate": False,
        "share": "disabled",
    }
    env = {"OPENCODE_CONFIG_CONTENT": json.dumps(config), "TURNOUT_API_KEY": session.key}
    return Plan(argv=("opencode", *extra), env=env)


def aider_plan(session: Session, extra: Sequence[str]) -> Plan:
    argv = [
        "aider",
        "--model",
        f"openai/{session.main}",
        "--weak-model",
        f"openai/{session.small}",
        "--no-check-update",
        "--analytics-disable",
    ]
    files: dict[str, str] = {}
    metadata = {
        f"openai/{name}": _litellm_entry(window)
        for name in dict.fromkeys((session.main, session.small))
        if (window := session.context(name))
    }
    if metadata:
        files["model-metadata.json"] = json.dumps(metadata, indent=2)
        argv += ["--model-metadata-file", f"{TEMP_DIR}/model-metadata.json"]
    env = {"OPENAI_API_BASE": session.url + "/v1", "OPENAI_API_KEY": session.key}
    return Plan(argv=(*argv, *extra), env=env, files=files)


def _litellm_entry(window: int) -> dict[str, Any]:
    """aider reads context sizes in litellm's model-metadata shape."""
    return {
        "max_input_tokens": window,
        "max_tokens": min(8192, window),
        "max_output_tokens": min(8192, window),
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "litellm_provider": "openai",
        "mode": "chat",
    }


CLIENTS: Mapping[str, Client] = MappingProxyType(
    {
        client.name: client
        for client in (
            Client(
                "claude",
                "claude",
                "npm install -g @anthropic-ai/claude-code",
                claude_plan,
                "Claude Code (Anthropic Messages, /v1/messages)",
            ),
            Client(
                "codex",
                "codex",
                "npm install -g @openai/codex",
                codex_plan,
                "Codex CLI (Responses, /v1/responses)",
            ),
            Client(
                "opencode",
                "opencode",
                "npm install -g opencode-ai",
                opencode_plan,
                "opencode (chat completions)",
            ),
            Client(
                "aider",
                "aider",
                "python -m pip install aider-chat",
                aider_plan,
                "aider (chat completions)",
            ),
        )
    }
)


# ---------------------------------------------------------------- models and windows (pure)


def toml_value(value: object) -> str:
    """A TOML literal for a ``-c`` override: JSON's strings and numbers are valid TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def listed(models: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The entries of a /v1/models answer by id (aliases included)."""
    data = models.get("data") or []
    return {str(m["id"]): m for m in data if isinstance(m, dict) and m.get("id")}


def pick_models(entries: Mapping[str, Mapping[str, Any]], requested: str | None) -> tuple[str, str]:
    """(main, small): --model, else the first preferred model the gateway lists, else its first
    available model. The small role (background tasks, titles) prefers ``fast``."""
    names = [n for n, m in entries.items() if not m.get("alias_of")]
    available = [n for n in names if entries[n].get("available", True)]
    main = requested or next(
        (n for n in MAIN_PREFERENCES if n in entries),
        available[0] if available else (names[0] if names else "default"),
    )
    small = next((n for n in SMALL_PREFERENCES if n in entries), main)
    return main, small


def context_windows(
    entries: Mapping[str, Mapping[str, Any]],
    wanted: Sequence[str],
    from_config: Callable[[str], int | None],
) -> dict[str, int]:
    """Each wanted model's context window: the gateway's answer first, then the routing file."""
    found: dict[str, int] = {}
    for name in wanted:
        window = _listed_window(entries, name) or from_config(name)
        if window:
            found[name] = window
    return found


def _listed_window(entries: Mapping[str, Mapping[str, Any]], name: str) -> int | None:
    entry = entries.get(name) or {}
    if entry.get("alias_of"):
        entry = {**(entries.get(str(entry["alias_of"])) or {}), **entry}
    for key in CONTEXT_FIELDS:
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def config_window(config: Any, name: str) -> int | None:
    """A model's context window from the routing file: the role of its first target (by
    priority) that is a local role; a role's own name and aliases are models too.
    ``config`` is a loaded ``gateway.config.Config``."""
    from gateway.config.roles import ROLE_PREFIX

    roles = config.roles
    for model in config.models:
        if name != model.name and name not in model.aliases:
            continue
        for target in sorted(model.targets, key=lambda t: t.priority):
            role = target.role or target.provider.removeprefix(ROLE_PREFIX)
            if role in roles:
                return int(roles[role].context)
        return None
    for role_name, role in roles.items():
        if name == role_name or name in role.aliases:
            return int(role.context)
    return None


def resolve_plan(plan: Plan, temp_dir: str) -> tuple[list[str], dict[str, str]]:
    """The plan's argv and env overrides with the temporary folder filled in."""
    argv = [a.replace(TEMP_DIR, temp_dir) for a in plan.argv]
    env = {k: v.replace(TEMP_DIR, temp_dir) for k, v in plan.env.items()}
    return argv, env


def child_environment(plan: Plan, base: Mapping[str, str], temp_dir: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in plan.unset}
    env.update(resolve_plan(plan, temp_dir)[1])
    return env


# ---------------------------------------------------------------- the command (effects)


def add_parser(commands: Any) -> None:
    from gateway.client.settings import add_arguments

    names = ", ".join(f"{c.name}: {c.about}" for c in CLIENTS.values())
    parser = commands.add_parser(
        "launch",
        help="start a coding agent (claude, codex, opencode, aider) pointed at this gateway",
        description="Start a coding agent with everything set for this session only: the "
        "gateway's URL and key, model names for its roles, and each model's context window. "
        f"No file of yours is changed. Clients: {names}. Arguments after `--` go to the client.",
    )
    add_arguments(parser)
    parser.add_argument("client", choices=sorted(CLIENTS), help="which coding agent")
    parser.add_argument("--model", help="main model (default: agent-coder, coder, or the first)")
    parser.add_argument("--small-model", help="model for background tasks (default: fast)")
    parser.add_argument(
        "--config",
        default="routing.yaml",
        help="routing file for context windows the gateway does not publish (optional)",
    )
    parser.set_defaults(handler=run, client_args=[])


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``launch claude --model m -- -p hi``: turnout's arguments, and the client's after ``--``.

    Split before argparse sees them, so client options never clash with turnout's own."""
    if not argv or argv[0] != "launch" or "--" not in argv:
        return list(argv), []
    cut = list(argv).index("--")
    return list(argv[:cut]), list(argv[cut + 1 :])


def run(args: argparse.Namespace) -> int:
    from gateway.client.api import ClientError, GatewayClient
    from gateway.client.output import fail
    from gateway.client.settings import SettingsError, from_args

    client = CLIENTS[args.client]
    binary = shutil.which(client.binary)
    if binary is None:
        return fail(f"{client.binary} is not installed (install it with: {client.install})", 2)
    try:
        settings = from_args(args)
        answer = GatewayClient(settings.url, key=settings.api_key).get("/v1/models")
    except SettingsError as exc:
        return fail(str(exc), 2)
    except ClientError as exc:
        return fail(f"no usable turnout gateway at {settings.url}: {exc}", 2)
    entries = listed(answer)
    main, small = pick_models(entries, args.model)
    small = args.small_model or small
    for name in dict.fromkeys((main, small)):
        if entries and name not in entries:
            # Not an error: a `patterns` glob (claude-*) may still route it.
            print(f"note: the gateway does not list model {name!r}", file=sys.stderr)
    windows = context_windows(entries, (main, small), _config_reader(Path(args.config)))
    session = Session(settings.url, settings.api_key or KEYLESS, main, small, windows)
    return execute(client.plan(session, list(args.client_args)), binary)


def _config_reader(path: Path) -> Callable[[str], int | None]:
    """A lookup into the routing file, or one that knows nothing when it cannot be read."""
    from gateway.config.loading import load
    from gateway.errors import ConfigError

    try:
        config = load(path) if path.is_file() else None
    except ConfigError:
        config = None
    if config is None:
        return lambda name: None
    return lambda name: config_window(config, name)


def execute(plan: Plan, binary: str) -> int:
    """Run the client in the foreground and hand back its exit status; temporary files go
    when it exits. Ctrl-C reaches the client directly (same process group): here it is ignored
    so cleanup still happens; a SIGTERM to turnout is passed on."""
    with tempfile.TemporaryDirectory(prefix="turnout-launch-") as temp_dir:
        for name, content in plan.files.items():
            path = Path(temp_dir) / name
            path.write_text(content, encoding="utf-8")
            path.chmod(0o600)
        argv, _ = resolve_plan(plan, temp_dir)
        env = child_environment(plan, os.environ, temp_dir)
        try:
            child = subprocess.Popen([binary, *argv[1:]], env=env)
        except OSError as exc:
            print(f"error: cannot start {binary}: {exc.strerror}", file=sys.stderr)
            return 2

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.send_signal(signum)

        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous_term = signal.signal(signal.SIGTERM, forward)
        try:
            code = child.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
    # A client killed by a signal exits the way a shell reports it.
    return 128 - code if code < 0 else code
