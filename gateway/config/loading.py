"""Reading routing.yaml: YAML → interpolation → Structs → engine kinds, roles and cross-checks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from gateway.config.interpolation import interpolate, record_missing_env
from gateway.config.keypath import readable
from gateway.config.peering import expand_peers, peer_problems
from gateway.config.roles import expand_roles, validate_roles
from gateway.config.schema import Config
from gateway.config.sections import plugin_sections, section_problems
from gateway.config.validation import validate
from gateway.errors import ConfigError


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
    raw = interpolate(raw, environ, "", missing)
    record_missing_env(raw, missing)
    raw, sections = plugin_sections(raw, source)
    try:
        config = msgspec.convert(raw, type=Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {readable(str(exc))}") from None
    if sections:
        config = msgspec.structs.replace(config, sections=sections)
    # Imported here: the kinds' registry is built from this package's types (and plugins).
    from gateway.engines.registry import kinds_for

    kinds = kinds_for(config)
    problems = kinds.role_problems(config.roles) + validate_roles(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    problems = peer_problems(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    config = expand_peers(expand_roles(config, kinds.upstream_model))
    problems = validate(config)
    try:
        problems += section_problems(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config
