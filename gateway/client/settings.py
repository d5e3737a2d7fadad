"""Where the CLI finds the gateway: flags, then environment, then the config file, then defaults.

The config file is TOML, ``$TURNOUT_CLI_CONFIG`` or ``~/.config/turnout/cli.toml``::

    url = "http://127.0.0.1:8080"   # the gateway
    key = "sk-..."                  # API key for /v1/* (TURNOUT_API_KEY, --key)
    admin_key = "..."               # admin key for /engine/* and /v1/usage (TURNOUT_ADMIN_KEY)
    model = "fast"                  # default model for chat and batch (TURNOUT_MODEL, --model)

Either key stands in for the other when only one is set: the admin key is accepted on every
endpoint, and on a single-user gateway the one key people have is often the admin key.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
# setting -> environment variable
ENVIRONMENT = {
    "url": "TURNOUT_URL",
    "key": "TURNOUT_API_KEY",
    "admin_key": "TURNOUT_ADMIN_KEY",
    "model": "TURNOUT_MODEL",
}


class SettingsError(Exception):
    """The config file cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Settings:
    url: str = DEFAULT_URL
    key: str | None = None
    admin_key: str | None = None
    model: str | None = None

    @property
    def api_key(self) -> str | None:
        return self.key or self.admin_key

    @property
    def admin(self) -> str | None:
        return self.admin_key or self.key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection flags every client command takes."""
    group = parser.add_argument_group("gateway")
    group.add_argument("--url", help=f"the gateway (env TURNOUT_URL; default {DEFAULT_URL})")
    group.add_argument("--key", help="API key (env TURNOUT_API_KEY)")
    group.add_argument(
        "--admin-key", help="admin key for /engine/* and /v1/usage (env TURNOUT_ADMIN_KEY)"
    )


def config_path(env: Mapping[str, str]) -> Path:
    explicit = env.get("TURNOUT_CLI_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "turnout" / "cli.toml"


def read_file(path: Path) -> dict[str, str]:
    """The config file's settings; a missing file is an empty one."""
    import tomllib

    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None
    known = ", ".join(ENVIRONMENT)
    for name, value in raw.items():
        if name not in ENVIRONMENT:
            raise SettingsError(f"{path}: unknown key {name!r} (expected one of {known})")
        if not isinstance(value, str):
            raise SettingsError(f"{path}: {name}: expected a string, got {type(value).__name__}")
    return raw


def resolve(flags: Mapping[str, str | None], env: Mapping[str, str] | None = None) -> Settings:
    """Each setting from the first place that has it: flags > env > file > defaults.

    The file is read only when some setting is still open after flags and environment.
    """
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    for name, variable in ENVIRONMENT.items():
        value = flags.get(name) or env.get(variable)
        if value:
            found[name] = value
    if len(found) < len(ENVIRONMENT):
        for name, value in read_file(config_path(env)).items():
            if value:
                found.setdefault(name, value)
    url = found.pop("url", DEFAULT_URL).rstrip("/")
    return Settings(url=url, **found)


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    flags = {name: getattr(args, name, None) for name in ENVIRONMENT}
    return resolve(flags, env)
