"""Cross-references msgspec cannot check, and warnings about configs that load fine."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.config.observability import capture_problems
from gateway.config.roles import ROLE_PREFIX
from gateway.config.schema import Config, Server
from gateway.config.upstreams import Timeouts


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
        problems.extend(_timeout_problems(f"providers.{name}.timeouts", provider.timeouts))
    if config.routing.retries < 0:
        problems.append("routing.retries: expected a number >= 0")
    if not config.usage.flush_interval_seconds > 0:
        problems.append("usage.flush_interval_seconds: expected a number > 0")
    problems.extend(_server_problems(config.server))
    problems.extend(capture_problems(config.capture))
    problems.extend(_responses_problems(config))
    problems.extend(_plugin_problems(config))
    return problems


def _responses_problems(config: Config) -> list[str]:
    settings = config.responses
    problems = [
        f"responses.{key}: expected a number > 0"
        for key in ("retention_hours", "max_bytes", "cache_bytes", "max_pending_bytes")
        if not getattr(settings, key) > 0
    ]
    names = {name for model in config.models for name in (model.name, *model.aliases)}
    # A local role is a model too (gateway/config/roles.py).
    names.update(n for name, role in config.roles.items() for n in (name, *role.aliases))
    if settings.summariser and settings.summariser not in names:
        known = ", ".join(sorted(names)) or "none defined"
        problems.append(
            f"responses.summariser: unknown model {settings.summariser!r} (models: {known})"
        )
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
