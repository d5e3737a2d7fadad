"""The start-up checks: what ``turnout serve`` refuses to start with, and ``turnout check``
reports. One list for both, so a routing file that check passes is one serve starts with, and
the other way round (a test runs both on every shipped config).

Nothing here opens a port, starts an engine or creates a file: the checks build the ``Wiring``
(adapter and engine kinds, plugins, composed prompts), ask the enabled plugins what would stop
their ``startup`` (``check_startup``), and look at the files and the bind address the server
would use (off loopback without an admin key, an existing database is read for keys, its schema
brought up to date first as the server would).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from adapters.builtin import default_registry
from gateway.config.schema import Config
from gateway.db import creation_problem
from gateway.errors import ConfigError
from gateway.state import Wiring
from gateway.telemetry.settings import problems as telemetry_problems


@dataclass(slots=True)
class Preflight:
    """The verdict: ``errors`` stop the server; ``notes`` are worth a warning."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What ``create_app`` is built from when there are no errors (built once, not twice).
    wiring: Wiring | None = None


def preflight(config: Config, bind: str | None = None) -> Preflight:
    """Every start-up check for ``config`` served on ``bind`` (default: ``server.host``)."""
    verdict = Preflight()
    try:
        verdict.wiring = Wiring.of(config, default_registry())
    except ConfigError as exc:
        # Kinds, plugins or prompts the gateway cannot be built from: nothing more to check.
        verdict.errors.append(str(exc))
        return verdict
    _roles(verdict.wiring, verdict)
    verdict.errors += verdict.wiring.plugins.startup_problems(config)
    verdict.errors += telemetry_problems(config.telemetry, os.environ)
    paths = [("server.database", config.server.database)]
    if config.roles and config.engines.log_dir:
        paths.append(("engines.log_dir", config.engines.log_dir))
    verdict.errors += [problem for key, path in paths if (problem := creation_problem(key, path))]
    # Imported here: it reads the keys table, which this module does not otherwise need.
    from gateway.server import addresses, open_network_refusal

    host = bind or config.server.host
    try:
        # Resolved only, as serve resolves it before it binds; the port stays unopened.
        addresses(host)
    except ConfigError as exc:
        verdict.errors.append(str(exc))
    refusal = open_network_refusal(config, host)
    if refusal:
        verdict.errors.append(refusal)
    if verdict.errors:
        verdict.wiring = None
    return verdict


def _roles(wiring: Wiring, verdict: Preflight) -> None:
    for name, role in wiring.config.roles.items():
        problem = wiring.engine_kinds.missing_parts(role)
        if problem.startswith("model "):
            # The engine is installed, so this role is meant to run here, and its first request
            # would fail. (Without the engine, e.g. the shipped example on a fresh machine, the
            # role just reports itself unavailable: a warning.)
            verdict.errors.append(f"roles.{name}.model: file {role.model!r} does not exist")
        elif problem:
            verdict.notes.append(f"roles.{name}: cannot start until fixed: {problem}")
