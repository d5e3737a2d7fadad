"""``${VAR}`` and ``${VAR:-default}`` in routing.yaml, filled from the environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.config.engines import TEMPLATE_VARIABLES

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, env: Mapping[str, str], path: str, missing: dict[str, list[str]]) -> Any:
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
            k: interpolate(v, env, f"{path}.{k}" if path else str(k), missing)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(node)]
    return node


def record_missing_env(raw: dict[str, Any], missing: dict[str, list[str]]) -> None:
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
