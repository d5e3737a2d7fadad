"""``turnout import llama-swap``: a llama-swap ``config.yaml`` mapped to routing.yaml (pure).

Each llama-swap model is a process it starts on demand and swaps out: a turnout local role.
``cmd`` becomes the role's ``command`` with its macros expanded and ``${PORT}`` kept (turnout's
placeholder for the port it picks, or the role's fixed ``port`` when ``proxy`` names one); for
llama-server the model file moves to the role's ``model`` (``${MODEL}`` in the command), so
``turnout check`` can say when it is missing and memory can be estimated from it. ``ttl``,
``aliases``, ``env``, ``checkEndpoint``, ``useModelName`` and ``healthCheckTimeout`` have
direct equivalents; ``groups`` become ``engines.groups``, ``hooks.on_startup.preload``
``engines.preload``, and ``peers`` OpenAI-compatible providers with a model each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import NotAConfig
from gateway.imports.macros import PORT, expand, macro_text, option, split_command
from gateway.imports.report import Imported

SECTIONS = (
    ("server", "Gateway-wide settings."),
    (
        "roles",
        "Local roles, one per llama-swap model: loaded on demand, swapped as requests need them.\n"
        "Each is also a model name clients can ask for (plus its aliases).",
    ),
    ("engines", "Which roles may be loaded together, and which load at start-up."),
    ("limits", "llama-swap's concurrencyLimit: requests in flight per model."),
    ("providers", "llama-swap's peers: servers elsewhere that serve the models listed below."),
    ("models", "The peers' models."),
)
# Model keys mapped below; any other is reported.
MODEL_KEYS = frozenset(
    {
        "cmd",
        "proxy",
        "ttl",
        "aliases",
        "env",
        "checkEndpoint",
        "useModelName",
        "name",
        "description",
        "macros",
        "concurrencyLimit",
    }
)
# Top-level keys mapped below, apart from models.
TOP_KEYS = frozenset(
    {"models", "macros", "groups", "hooks", "peers", "logLevel", "healthCheckTimeout", "globalTTL"}
)
WHY_NOT = {
    "apiKeys": "create keys with `turnout keys create` (one per client, with limits)",
    "startPort": "not needed: turnout picks a free port per role",
    "matrix": "turnout loads what fits (engines.groups, memory_mb) instead of a solver DSL",
    "profiles": "no turnout equivalent; a model with several targets or aliases may do",
    "sendLoadingState": "turnout keeps a waiting stream alive with SSE comments instead",
}
LOG_LEVELS = {"warn": "warning"}
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


@dataclass(frozen=True, slots=True)
class Defaults:
    """Global settings that fill each role in."""

    ttl: float
    start_timeout: float | None


def from_llama_swap(raw: Any) -> Imported:
    """Map a parsed llama-swap config; raises NotAConfig when ``raw`` is not one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("models", {}), dict):
        raise NotAConfig("not a llama-swap config: expected a mapping with models")
    if "models" not in raw and "peers" not in raw:
        raise NotAConfig("not a llama-swap config: it has neither models nor peers")
    out = Imported("llama-swap")
    for name, comment in SECTIONS:
        out.section(name, comment)
    macros = _macros(raw.get("macros"), "macros", out)
    defaults = _defaults(raw)
    for model_id, body in (raw.get("models") or {}).items():
        _role(str(model_id), body, macros, defaults, out)
    roles = [str(e.key) for e in out.section("roles").entries]
    _unique_aliases(out)
    _groups(raw.get("groups"), roles, out)
    _preload(raw.get("hooks"), roles, out)
    _peers(raw.get("peers"), out)
    if isinstance(raw.get("logLevel"), str):
        level = LOG_LEVELS.get(raw["logLevel"], raw["logLevel"])
        out.section("server").add("log_level", level, f"logLevel: {raw['logLevel']}")
    for key in raw:
        if key not in TOP_KEYS:
            out.skip(key, WHY_NOT.get(key, "no turnout equivalent"))
    return out


def _defaults(raw: dict[str, Any]) -> Defaults:
    ttl = raw.get("globalTTL", 0)
    timeout = raw.get("healthCheckTimeout")
    return Defaults(
        ttl=float(ttl) if isinstance(ttl, int | float) and ttl > 0 else 0.0,
        # llama-swap raises anything under 15 s to 15 s.
        start_timeout=max(15.0, float(timeout)) if isinstance(timeout, int | float) else None,
    )


def _macros(value: Any, where: str, out: Imported) -> dict[str, str]:
    """Macro texts, expanded where they are used (a model's own over the global ones)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        out.skip(where, "expected a mapping of macros")
        return {}
    return {str(name): macro_text(body) for name, body in value.items()}


def _role(
    model_id: str, body: Any, macros: dict[str, str], defaults: Defaults, out: Imported
) -> None:
    where = f"models.{model_id}"
    if not isinstance(body, dict) or not isinstance(body.get("cmd"), str):
        out.skip(where, "expected a mapping with cmd")
        return
    local = {**macros, **_macros(body.get("macros"), f"{where}.macros", out)}
    unknown: list[str] = []
    args = split_command(expand(body["cmd"], local, model_id, unknown))
    proxy = expand(str(body.get("proxy") or "http://localhost:" + PORT), local, model_id, unknown)
    for name in unknown:
        out.skip(f"{where}.cmd", f"unknown macro ${{{name}}}, left as written")
    role: dict[str, Any] = {**_engine(where, model_id, args, out)}
    role.update(_port(where, proxy, args, out))
    role.update(_settings(where, model_id, body, defaults, out))
    if isinstance(body.get("concurrencyLimit"), int) and body["concurrencyLimit"] > 0:
        limits = out.section("limits")
        models = limits.entries[0].value if limits.entries else {}
        if not limits.entries:
            limits.add("models", models)
        models[model_id] = {"concurrent": body["concurrencyLimit"]}
    for key in body:
        if key not in MODEL_KEYS:
            out.skip(f"{where}.{key}", _why_not_model_key(str(key)))
    comment = f"llama-swap model {model_id}" + (f" ({body['name']})" if body.get("name") else "")
    out.section("roles").add(model_id, role, comment)


def _why_not_model_key(key: str) -> str:
    return {
        "cmdStop": "turnout stops the engine's process group (SIGTERM, then SIGKILL)",
        "unlisted": "turnout lists every model in GET /v1/models",
        "filters": "turnout does not rewrite request parameters",
        "timeouts": "a role's upstream deadlines are turnout's own (providers' defaults)",
        "sendLoadingState": "turnout keeps a waiting stream alive with SSE comments instead",
    }.get(key, "no turnout equivalent")


def _engine(where: str, model_id: str, args: list[str], out: Imported) -> dict[str, Any]:
    """The engine kind, model and command: llama-server, mlx_lm.server, vLLM or any server."""
    program = os.path.basename(args[0]) if args else ""
    if program.startswith("llama-server"):
        engine: dict[str, Any] = {"engine": "llamacpp", **_model_arg(args, ("-m", "--model"))}
        if "model" not in engine:
            # A model from the Hugging Face hub (-hf) is llama-server's to fetch and find.
            hub = option(args, "-hf", "--hf-repo")
            engine = {"engine": "llamacpp", "model": hub[1] if hub else model_id, "command": args}
            if not hub:
                out.skip(f"{where}.cmd", "no -m/--model file: roles.X.model is only a label")
    elif program == "mlx_lm.server" or args[1:3] == ["-m", "mlx_lm.server"]:
        engine = {"engine": "mlx", **_model_arg(args, ("--model",))}
        engine.setdefault("model", model_id)
    elif program == "vllm" and args[1:2] == ["serve"] and len(args) > 2:
        engine = {"engine": "vllm", "model": args[2], "command": args}
    else:
        found = option(args, "-m", "--model")
        engine = {"engine": "llamacpp", "model": found[1] if found else model_id}
        engine.update(command=args, kv_cache=False)
        out.approximate(
            f"{where}.cmd",
            f"{program or 'its command'} runs as a spawned role spoken to in OpenAI's format "
            "(engine llamacpp, KV cache kept off)",
        )
    context = option(args, "-c", "--ctx-size", "--max-model-len")
    if context and context[1].isdigit():
        engine["context"] = int(context[1])
    return engine


def _model_arg(args: list[str], names: tuple[str, ...]) -> dict[str, Any]:
    """The model file as the role's ``model``, ``${MODEL}`` in its place in the command."""
    found = option(args, *names)
    if found is None:
        return {"command": args}
    index, value, prefix = found
    command = [*args[:index], prefix + "${MODEL}", *args[index + 1 :]]
    return {"model": value, "command": command}


def _port(where: str, proxy: str, args: list[str], out: Imported) -> dict[str, Any]:
    parts = urlsplit(proxy)
    if parts.path.strip("/"):
        out.skip(f"{where}.proxy", f"path {parts.path!r}: turnout calls <host:port>/v1")
    if PORT in proxy:
        if not any(PORT in arg for arg in args):
            out.skip(
                f"{where}.cmd",
                "does not use ${PORT}: set roles.X.port to the port the server listens on",
            )
        return {}
    if (parts.hostname or "") not in LOOPBACK:
        out.skip(f"{where}.proxy", f"{proxy}: turnout reaches spawned roles on 127.0.0.1 only")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        out.skip(f"{where}.proxy", f"{proxy}: no port turnout can use")
        return {}
    return {"port": port}


def _settings(
    where: str, model_id: str, body: dict[str, Any], defaults: Defaults, out: Imported
) -> dict[str, Any]:
    role: dict[str, Any] = {}
    ttl = body.get("ttl", -1)
    ttl = defaults.ttl if not isinstance(ttl, int | float) or ttl < 0 else float(ttl)
    if ttl > 0:
        role["ttl_seconds"] = ttl
    if defaults.start_timeout is not None:
        role["start_timeout_seconds"] = defaults.start_timeout
    check = body.get("checkEndpoint")
    if check == "none":
        out.skip(f"{where}.checkEndpoint", "none: turnout polls a health path (roles.X.health)")
    elif isinstance(check, str) and check:
        role["health"] = check
    if isinstance(body.get("useModelName"), str) and body["useModelName"]:
        role["upstream_model"] = body["useModelName"]
    aliases = [_alias_id(a) for a in body.get("aliases") or []]
    if aliases:
        role["aliases"] = [a for a in aliases if a]
    role.update(_env(where, body.get("env"), out))
    text = ": ".join(str(body[k]) for k in ("name", "description") if body.get(k))
    if text:
        role["description"] = text
    return role


def _unique_aliases(out: Imported) -> None:
    """A name answers one model: aliases already taken (llama-swap refuses them too) are dropped."""
    entries = out.section("roles").entries
    taken = {str(e.key) for e in entries}
    for entry in entries:
        kept = []
        for alias in entry.value.get("aliases", []):
            if alias in taken:
                out.skip(f"models.{entry.key}.aliases", f"{alias!r} already names another model")
            else:
                kept.append(alias)
                taken.add(alias)
        if kept:
            entry.value["aliases"] = kept
        else:
            entry.value.pop("aliases", None)


def _alias_id(alias: Any) -> str:
    # Older configs list names; newer ones {id, name, unlisted}.
    return str(alias.get("id", "")) if isinstance(alias, dict) else str(alias)


def _env(where: str, value: Any, out: Imported) -> dict[str, Any]:
    env: dict[str, str] = {}
    for item in value if isinstance(value, list) else []:
        name, sep, setting = str(item).partition("=")
        if sep:
            env[name] = setting
        else:
            out.skip(f"{where}.env", f"{item!r}: expected NAME=value")
    result: dict[str, Any] = {}
    devices = env.pop("CUDA_VISIBLE_DEVICES", None)
    if devices is not None:
        indices = [d.strip() for d in devices.split(",")]
        if all(d.isdigit() for d in indices) and indices:
            # turnout sets CUDA_VISIBLE_DEVICES itself from the role's GPUs.
            result["gpus"] = [int(d) for d in indices]
        else:
            env["CUDA_VISIBLE_DEVICES"] = devices
    if env:
        result["env"] = env
    return result


def _groups(value: Any, roles: list[str], out: Imported) -> None:
    if not isinstance(value, dict):
        return
    groups: dict[str, Any] = {}
    placed: dict[str, str] = {}
    for name, body in value.items():
        where = f"groups.{name}"
        if not isinstance(body, dict):
            out.skip(where, "expected a mapping with members")
            continue
        members = []
        for member in body.get("members") or []:
            if member not in roles:
                out.skip(f"{where}.members", f"{member!r} is not a model of this config")
            elif member in placed:
                out.skip(f"{where}.members", f"{member!r} is already in group {placed[member]}")
            else:
                members.append(member)
                placed[member] = str(name)
        if not members:
            out.skip(where, "no members left: group left out")
            continue
        swap = body.get("swap", True) is not False
        group: dict[str, Any] = {"members": members, "max_loaded": 1 if swap else len(members)}
        if body.get("persistent") is True:
            if len(members) <= group["max_loaded"]:
                group["persistent"] = members
            else:
                out.skip(f"{where}.persistent", "with swap: true only one member fits at once")
        if body.get("exclusive", True) is not False:
            out.approximate(
                f"{where}.exclusive",
                "turnout unloads other groups' roles only when memory runs short",
            )
        groups[str(name)] = group
    if groups:
        out.section("engines").add("groups", groups)


def _preload(value: Any, roles: list[str], out: Imported) -> None:
    if not isinstance(value, dict):
        return
    for hook, body in value.items():
        if hook != "on_startup" or not isinstance(body, dict):
            out.skip(f"hooks.{hook}", "no turnout equivalent")
            continue
        for action in body:
            if action != "preload":
                out.skip(f"hooks.on_startup.{action}", "no turnout equivalent")
        preload = []
        for name in body.get("preload") or []:
            if name in roles:
                preload.append(name)
            else:
                out.skip("hooks.on_startup.preload", f"{name!r} is not a model of this config")
        if preload:
            out.section("engines").add("preload", preload)


def _peers(value: Any, out: Imported) -> None:
    if not isinstance(value, dict):
        return
    taken = {str(e.key) for e in out.section("roles").entries}
    taken |= {a for e in out.section("roles").entries for a in e.value.get("aliases", [])}
    for name, body in value.items():
        where = f"peers.{name}"
        proxy = str(body.get("proxy", "")) if isinstance(body, dict) else ""
        if not proxy.startswith(("http://", "https://")):
            out.skip(where, "expected a proxy URL")
            continue
        unknown: list[str] = []
        provider: dict[str, Any] = {
            "kind": "openai-compatible",
            "base_url": proxy.rstrip("/") + "/v1",
        }
        if body.get("apiKey"):
            provider["api_key"] = expand(str(body["apiKey"]), {}, "", unknown)
        out.section("providers").add(str(name), provider)
        for key in body:
            if key not in ("proxy", "apiKey", "models"):
                out.skip(f"{where}.{key}", _why_not_model_key(str(key)))
        for model in body.get("models") or []:
            if model in taken:
                out.skip(f"{where}.models", f"{model!r} is already a local model's name")
                continue
            taken.add(model)
            target = {"provider": str(name), "model": str(model)}
            out.section("models").add(None, {"name": str(model), "targets": [target]})
