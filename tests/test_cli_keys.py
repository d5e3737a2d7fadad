"""`turnout keys` as a user types it: options after the action, and output into a pipe that
closes early (`turnout keys --json list | head`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cli_harness import ADMIN_KEY, cli_env, serve_in_thread, turnout

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


def _served_config(tmp_path: Path) -> Callable[[object], dict[str, Any]]:
    return lambda _: {
        "server": {"database": str(tmp_path / "served.db")},
        "auth": {"admin_key": ADMIN_KEY},
    }


def test_keys_with_url_manage_a_running_gateway_through_its_admin_api(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    with serve_in_thread(_served_config(tmp_path)) as served:
        remote = ("--url", served.url, "--admin-key", ADMIN_KEY)
        made = turnout(
            "keys", "create", *remote, "--name", "ci", "--agent", "ci-bot", "--rpm", "60",
            "--budget", "5", "--period", "weekly", "--json", env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        assert created["key"].startswith("sk-turnout-") and created["agent_id"] == "ci-bot"

        table = turnout("keys", *remote, "list", env=env)
        assert table.returncode == 0, table.stderr
        assert created["id"] in table.stdout and "0.00 / 5.00 weekly" in table.stdout

        budget = turnout(
            "keys", "budget", "dao-7", "--budget", "20", "--period", "monthly", *remote, env=env
        )
        assert budget.returncode == 0, budget.stderr
        assert "project dao-7: 0.00 / 20.00 monthly" in budget.stdout
        budgets = turnout("keys", "budgets", "--json", *remote, env=env)
        assert [b["project"] for b in json.loads(budgets.stdout)] == ["dao-7"]

        revoked = turnout("keys", "revoke", created["id"], *remote, env=env)
        assert revoked.returncode == 0 and f"revoked {created['id']}" in revoked.stdout
        again = turnout("keys", "revoke", created["id"], *remote, env=env)
        assert again.returncode == 1 and "no active key" in again.stderr
        listed = turnout("keys", "list", "--all", "--json", *remote, env=env)
        assert [k["revoked"] for k in json.loads(listed.stdout)] == [True]

        wrong = turnout("keys", "list", "--url", served.url, "--admin-key", "nope", env=env)
        assert wrong.returncode == 1 and "HTTP 403" in wrong.stderr
        bad = turnout(
            "keys", "create", *remote, "--name", "x", "--agent", "x", "--rpm", "-1", env=env
        )
        assert bad.returncode == 1 and "rpm" in bad.stderr


def test_budgets_and_periods_work_on_the_database_file_too(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    config = str(_config(tmp_path))
    made = turnout(
        "keys", "create", "--config", config, "--name", "a", "--agent", "a",
        "--budget", "1.5", "--period", "daily", env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    listed = turnout("keys", "list", "--config", config, "--json", env=env)
    [key] = json.loads(listed.stdout)
    assert (key["budget_usd"], key["budget_period"], key["spent_usd"]) == (1.5, "daily", 0.0)
    assert (
        turnout("keys", "budget", "p1", "--budget", "3", "--config", config, env=env).returncode
        == 0
    )
    removed = turnout("keys", "budget", "p1", "--remove", "--config", config, env=env)
    assert removed.returncode == 0 and "removed the budget of p1" in removed.stdout
    gone = turnout("keys", "budget", "p1", "--remove", "--config", config, env=env)
    assert gone.returncode == 1
    bad = turnout("keys", "budget", "p1", "--budget", "-1", "--config", config, env=env)
    assert bad.returncode == 1 and "budget" in bad.stderr
