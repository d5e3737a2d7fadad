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
    """Per-target upstream timeouts, in seconds."""

    connect: float = 5.0
    # Non-streaming calls: the whole answer. Streaming calls: the first event.
    first_byte: float = 300.0
    # Streaming calls: the longest silence between two chunks.
    idle: float = 120.0


class Provider(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One upstream endpoint: an engine on this machine or a cloud API."""

    kind: str
    base_url: str
    api_key: str = ""
    # Local providers are allowed behind ``local_only`` models. None: inferred from base_url's host.
    local: bool | None = None
    headers: dict[str, str] = {}
    timeouts: Timeouts = Timeouts()
    # Filled by the loader: environment variables named in this provider but not set.
    missing_env: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        if self.local is not None:
            return self.local
        return _is_private_host(urlsplit(self.base_url).hostname or "")


class Target(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One place a logical model can be served: a provider and the model name it knows."""

    provider: str
    model: str
    weight: float = 1.0
    # Lower is tried first; targets sharing a priority are load-balanced.
    priority: int = 0


class Model(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A logical model clients ask for by name or alias."""

    name: str
    targets: tuple[Target, ...]
    aliases: tuple[str, ...] = ()
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


class Server(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024
    # While a streaming client waits for the first token, send an SSE comment this often.
    keepalive_seconds: float = 5.0
    # How often local providers are probed for /v1/models availability.
    probe_seconds: float = 10.0
    log_level: str = "info"


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    server: Server = Server()
    routing: Routing = Routing()
    providers: dict[str, Provider] = {}
    models: tuple[Model, ...] = ()
    # Issue 3 (local engine roles) extends this file; until then the key is accepted as-is.
    roles: dict[str, Any] = {}


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
    problems = validate(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


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
        for j, target in enumerate(model.targets):
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
    if config.routing.retries < 0:
        problems.append("routing.retries: expected a number >= 0")
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
    return notes


def _interpolate(
    node: Any, env: Mapping[str, str], path: str, missing: dict[str, list[str]]
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; note unset variables by path."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
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
