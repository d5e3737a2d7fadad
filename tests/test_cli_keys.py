"""`turnout keys` as a user types it: options after the action, and output into a pipe that
closes early (`turnout keys --json list | head`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cli_harness import cli_env, turnout

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "routing.yaml"
    config.write_text(f"server: {{database: {tmp_path / 'keys.db'}}}\n")
    return config


def test_config_and_json_work_after_the_action_as_well_as_before(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    config = str(_config(tmp_path))
    after = turnout("keys", "create", "--config", config, "--name", "a", "--agent", "a", env=env)
    assert after.returncode == 0, after.stderr
    both = turnout(
        "keys", "--config", config, "create", "--name", "b", "--agent", "b", "--json", env=env
    )
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["key"].startswith("sk-")
    for args in (
        ("keys", "list", "--config", config, "--json"),
        ("keys", "--json", "list", "--config", config),
        ("keys", "--config", config, "--json", "list"),
    ):
        listed = turnout(*args, env=env)
        assert listed.returncode == 0, (args, listed.stderr)
        assert [k["name"] for k in json.loads(listed.stdout)] == ["a", "b"], args
    revoked = turnout("keys", "revoke", "a", "--config", config, env=env)
    assert revoked.returncode == 0 and "revoked a" in revoked.stdout


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    config = str(_config(tmp_path))
    for i in range(3):
        made = turnout(
            "keys", "--config", config, "create", "--name", f"k{i}", "--agent", "a", env=env
        )
        assert made.returncode == 0, made.stderr
    # `| head` that has already exited: the pipe has no reader when turnout writes.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "--config", config, "--json", "list"],
            cwd=ROOT,
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert listed.stderr == ""
    assert listed.returncode == 141
