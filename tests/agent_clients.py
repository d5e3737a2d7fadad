"""The real coding agents (Claude Code, Codex, opencode), installed once from npm into a cache.

``ensure_clients()`` installs pinned versions under ``~/.cache/turnout/clients`` (or
``$TURNOUT_CLIENTS_DIR``) the first time and returns the folder holding their executables, for a
test's or a benchmark's PATH. The packages ship their native binaries as npm optional
dependencies, so after this one install they run offline. Without npm it returns None and the
callers skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Pinned so a test's view of the clients' wire traffic does not change under it.
PACKAGES = {
    "claude": "@anthropic-ai/claude-code@2.1.197",
    "codex": "@openai/codex@0.171.0",
    "opencode": "opencode-ai@1.18.33",
}


def clients_dir() -> Path:
    explicit = os.environ.get("TURNOUT_CLIENTS_DIR")
    if explicit:
        return Path(explicit)
    return Path.home() / ".cache" / "turnout" / "clients"


def ensure_clients(names: tuple[str, ...] = tuple(PACKAGES), timeout: float = 600) -> Path | None:
    """The bin folder with every named client, installing what is missing; None without npm."""
    root = clients_dir()
    bin_dir = root / "node_modules" / ".bin"
    missing = [name for name in names if not (bin_dir / name).exists()]
    if not missing:
        return bin_dir
    npm = shutil.which("npm")
    if npm is None:
        return None
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(root)]
        + [PACKAGES[name] for name in missing],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    return bin_dir
