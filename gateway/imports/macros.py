"""llama-swap's ``${name}`` macros and ``cmd`` strings, as turnout's command lists (pure).

llama-swap expands a model's macros (its own over the global ones, which may use earlier ones),
``${MODEL_ID}`` (the model's id) and ``${env.NAME}`` (the environment, at load) and fills
``${PORT}`` per start. In routing.yaml the environment is ``${NAME}`` (filled at load too) and
``${PORT}`` is turnout's own per-start placeholder, so both are kept as such.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from gateway.config.engines import TEMPLATE_VARIABLES

_MACRO = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
# Macros within macros: deeper than this is a cycle.
_MAX_DEPTH = 16
PORT = "${PORT}"


def macro_text(value: Any) -> str:
    """A macro's value as llama-swap writes it into a string (YAML numbers and bools too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def expand(text: str, macros: Mapping[str, str], model_id: str, unknown: list[str]) -> str:
    """``text`` with every macro filled; names it cannot fill are kept and added to ``unknown``."""

    def fill(match: re.Match[str], depth: int) -> str:
        name = match.group(1)
        if name.startswith("env."):
            return "${" + name[4:] + "}"
        if name == "MODEL_ID":
            return model_id
        if name in TEMPLATE_VARIABLES:
            return match.group(0)
        if name in macros and depth < _MAX_DEPTH:
            return _MACRO.sub(lambda m: fill(m, depth + 1), macros[name])
        if name not in unknown:
            unknown.append(name)
        return match.group(0)

    return _MACRO.sub(lambda m: fill(m, 0), text)


def split_command(cmd: str) -> list[str]:
    """llama-swap's ``cmd``: comment lines dropped, then split as a shell would (no shell runs)."""
    lines = [line for line in cmd.splitlines() if not line.strip().startswith("#")]
    return shlex.split(" ".join(lines))


def option(args: list[str], *names: str) -> tuple[int, str, str] | None:
    """The first ``--name value`` or ``--name=value`` among ``args``: the index holding the
    value, the value, and what precedes it there (``"--name="`` or ``""``)."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return i + 1, args[i + 1], ""
            if arg.startswith(name + "="):
                return i, arg[len(name) + 1 :], name + "="
    return None
