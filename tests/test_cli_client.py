"""The client commands as a user runs them: a real `turnout` process against a real gateway.

The gateway runs on a thread of this process (tests/cli_harness.py) with a fake upstream or
real llama-server engines; every command is a subprocess (`python -m gateway ...`), with an
empty HOME so no config file or history of the machine leaks in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.client.settings import DEFAULT_URL, Settings, SettingsError, resolve
from tests.cli_harness import ADMIN_KEY, ROOT, Served, cli_env, serve_in_thread, turnout
from tests.fakes.openai_upstream import FakeOpenAI


def fake_models(fake: FakeOpenAI | None, **sections: Any) -> dict[str, Any]:
    assert fake is not None
    return {
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [
            {"name": "chat", "aliases": ["gpt-4o"], "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "broken", "targets": [{"provider": "up", "model": "error-500"}]},
        ],
        "routing": {"retries": 0, "cooldown_seconds": 30},
        "auth": {"admin_key": ADMIN_KEY},
        **sections,
    }


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve_in_thread(fake_models, FakeOpenAI()) as running:
        yield running


@pytest.fixture
def env(served: Served, tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path, TURNOUT_URL=served.url, TURNOUT_ADMIN_KEY=ADMIN_KEY)


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command says why on one line, without a traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- start-up time ------------------------------------------------------------------------------


def test_help_and_every_command_help_start_in_well_under_a_second(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    timings = {}
    for args in (
        ["--help"],
        ["status", "--help"],
        ["chat", "--help"],
        ["batch", "--help"],
        ["switch", "--help"],
        ["tool", "--help"],
    ):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            result = turnout(*args, env=env)
            best = min(best, time.perf_counter() - started)
            assert result.returncode == 0 and "usage: turnout" in result.stdout
        timings[" ".join(args)] = best
    print("startup:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
    # The goal is < 1 s (about 0.1 s on a developer machine); 2 s keeps a loaded CI green.
    assert max(timings.values()) < 2.0, timings


def test_client_commands_do_not_import_the_server_at_start() -> None:
    code = (
        "import sys; from gateway.cli import main\n"
        "try:\n    main(['status', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('litestar', 'uvicorn', 'aiohttp', 'urllib.request')"
        " if m in sys.modules]\n"
        "print('heavy:' + ','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[-1] == "heavy:"


# --- settings: flags > environment > config file > defaults -------------------------------------


def test_settings_come_from_flags_then_environment_then_the_file(tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"
    config.write_text('url = "http://file:1"\nkey = "file-key"\nadmin_key = "file-admin"\n')
    env = {"TURNOUT_CLI_CONFIG": str(config), "TURNOUT_API_KEY": "env-key"}
    assert resolve({}, env) == Settings(url="http://file:1", key="env-key", admin_key="file-admin")
    assert resolve({"url": "http://flag:2/", "key": "flag-key"}, env) == Settings(
        url="http://flag:2", key="flag-key", admin_key="file-admin"
    )
    config.write_text('model = "fast"\n')
    assert resolve({}, {**env, "TURNOUT_MODEL": "coder"}).model == "coder"
    assert resolve({}, env).model == "fast"
    assert resolve({}, {"HOME": str(tmp_path)}) == Settings(url=DEFAULT_URL)
    home_config = tmp_path / ".config" / "turnout" / "cli.toml"
    home_config.parent.mkdir(parents=True)
    home_config.write_text('url = "http://home:3"\n')
    assert resolve({}, {"HOME": str(tmp_path)}).url == "http://home:3"


def test_either_key_stands_in_for_the_other() -> None:
    only_admin = Settings(admin_key="a")
    only_key = Settings(key="k")
    assert (only_admin.api_key, only_admin.admin) == ("a", "a")
    assert (only_key.api_key, only_key.admin) == ("k", "k")
    assert (Settings(key="k", admin_key="a").api_key, Settings(key="k", admin_key="a").admin) == (
        "k",
        "a",
    )


def test_a_bad_config_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "cli.toml"
    config.write_text('urll = "http://x"\n')
    with pytest.raises(SettingsError, match=r"cli.toml: unknown key 'urll' \(expected one of url"):
        resolve({}, {"TURNOUT_CLI_CONFIG": str(config)})
    config.write_text("key = 3\n")
    with pytest.raises(SettingsError, match="key: expected a string, got int"):
        resolve({}, {"TURNOUT_CLI_CONFIG": str(config)})
    config.write_text("url = \n")
    result = turnout("models", env=cli_env(tmp_path, TURNOUT_CLI_CONFIG=str(config)))
    assert "invalid TOML" in one_error_line(result)


def test_the_config_file_alone_is_enough_to_reach_the_gateway(
    served: Served, tmp_path: Path
) -> None:
    config = tmp_path / ".config" / "turnout" / "cli.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{served.url}"\nadmin_key = "{ADMIN_KEY}"\n')
    env = cli_env(tmp_path)
    assert json_of(turnout("status", "--json", env=env))["providers"]["up"]["available"]
    # A flag beats the file: this URL has nothing listening.
    refused = turnout("models", "--url", "http://127.0.0.1:9", env=env)
    assert "cannot reach turnout at http://127.0.0.1:9" in one_error_line(refused)
    # ...and so does the environment.
    wrong = turnout("models", env={**env, "TURNOUT_ADMIN_KEY": "wrong"})
    assert one_error_line(wrong) == "error: HTTP 401: invalid API key"


# --- models, status, check, usage ---------------------------------------------------------------


def test_models_lists_models_aliases_and_availability(env: dict[str, str]) -> None:
    result = turnout("models", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "AVAILABLE", "ALIASES", "TARGETS"]
    assert lines[1].split() == ["chat", "yes", "gpt-4o", "up/ok"]
    assert lines[2].split()[:2] == ["broken", "yes"]
    answer = json_of(turnout("models", "--json", env=env))
    assert {m["id"] for m in answer["data"]} == {"chat", "gpt-4o", "broken"}


def test_status_summarises_providers_and_recent_errors(env: dict[str, str]) -> None:
    chat = turnout("chat", "--model", "broken", env=env, stdin="hello\n")
    assert "HTTP 502" in chat.stderr
    result = turnout("status", env=env)
    assert result.returncode == 0, result.stderr
    assert "engine    ready, loaded: none" in result.stdout
    assert "queue     0 waiting" in result.stdout
    provider = next(line for line in result.stdout.splitlines() if line.startswith("  up "))
    assert provider.split()[:4] == ["up", "openai", "local", "yes"]
    assert "recent errors\n  target up/error-500 (cooling down): upstream returned HTTP 500" in (
        result.stdout
    )
    status = json_of(turnout("status", "--json", env=env))
    assert set(status) >= {"role", "loaded", "state", "engines", "queue", "providers", "targets"}


def test_admin_endpoints_need_the_admin_key(env: dict[str, str]) -> None:
    no_admin = {k: v for k, v in env.items() if k != "TURNOUT_ADMIN_KEY"}
    line = one_error_line(turnout("status", env=no_admin))
    assert line.startswith("error: HTTP 401: this endpoint needs the admin key")
    line = one_error_line(turnout("status", "--admin-key", "nope", env=no_admin))
    assert line == "error: HTTP 401: invalid API key" or "admin key" in line


def test_check_prints_json_for_scripts(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    ok = json_of(turnout("check", "--json", env=env))
    assert ok["ok"] is True and ok["path"] == "routing.yaml" and ok["models"] >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: m, targets: [{provider: ghost, model: x}]}]\n")
    result = turnout("check", str(bad), "--json", env=env)
    assert result.returncode == 1
    assert (
        "models[0].targets[0].provider: unknown provider 'ghost'"
        in json.loads(result.stdout)["error"]
    )
    assert turnout("check", env=env).stdout.startswith("routing.yaml: ok (")


def test_usage_reads_the_url_and_admin_key_from_the_config_file(
    served: Served, tmp_path: Path
) -> None:
    config = tmp_path / "cli.toml"
    config.write_text(f'url = "{served.url}"\nadmin_key = "{ADMIN_KEY}"\n')
    env = cli_env(tmp_path, TURNOUT_CLI_CONFIG=str(config))
    assert turnout("chat", "--model", "chat", env=env, stdin="count me\n").returncode == 0
    deadline = time.monotonic() + 10
    while True:
        report = json_of(turnout("usage", "--json", "--model", "chat", env=env))
        if report["totals"]["requests"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert report["totals"]["requests"] >= 1
    table = turnout("usage", "--group-by", "model", env=env)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[0] == "model"


def test_usage_takes_the_admin_key_as_admin_key_like_every_command(
    served: Served, tmp_path: Path
) -> None:
    """Issue 16: `usage --key` meant the admin key while `--key` elsewhere is the API key.
    `--admin-key` is the flag now; the old `--key` still works, with one deprecation line."""
    env = cli_env(tmp_path, TURNOUT_URL=served.url)
    now = turnout("usage", "--json", "--admin-key", ADMIN_KEY, env=env)
    assert "totals" in json_of(now) and now.stderr == ""
    old = turnout("usage", "--json", "--key", ADMIN_KEY, env=env)
    assert "totals" in json_of(old)
    [warning] = old.stderr.splitlines()
    assert warning.startswith("warning: `turnout usage --key` is deprecated")
    assert "--admin-key" in warning
    # Both given: each means what it means in every other command; nothing is deprecated.
    both = turnout("usage", "--json", "--key", "sk-not-admin", "--admin-key", ADMIN_KEY, env=env)
    assert "totals" in json_of(both) and both.stderr == ""
    wrong = turnout("usage", "--admin-key", "not-the-admin-key", env=env)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr


# --- errors -------------------------------------------------------------------------------------


def test_unreachable_gateway_is_one_clear_line_for_every_command(tmp_path: Path) -> None:
    env = cli_env(tmp_path, TURNOUT_URL="http://127.0.0.1:9")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x", "model": "m"}\n')
    for args in (
        ["models"],
        ["status"],
        ["switch", "fast"],
        ["tool", "echo", "{}"],
        ["usage"],
        ["chat", "--model", "m"],
    ):
        line = one_error_line(turnout(*args, env=env, stdin="hi\n"))
        assert "cannot reach turnout at http://127.0.0.1:9" in line, args
    # batch records the failure per item and still ends with a summary
    result = turnout("batch", str(prompts), "--quiet", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    record = json.loads((tmp_path / "p.jsonl.results.jsonl").read_text())
    assert record["ok"] is False and "cannot reach turnout" in record["error"]


def test_switch_on_a_gateway_without_roles_says_so(env: dict[str, str]) -> None:
    result = turnout("switch", "fast", env=env)
    assert one_error_line(result) == (
        "error: HTTP 404: unknown role 'fast'; roles: none configured (see roles: in routing.yaml)"
    )
    assert result.stdout == ""
    as_json = turnout("switch", "fast", "--json", env=env)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["ok"] is False


def test_tool_rejects_arguments_that_are_not_a_json_object(env: dict[str, str]) -> None:
    result = turnout("tool", "echo", "[1, 2]", env=env)
    assert result.returncode == 2
    assert one_error_line(result) == (
        'error: the arguments must be a JSON object, like \'{"city": "Paris"}\''
    )
    result = turnout("tool", "echo", "{nope", env=env)
    assert result.returncode == 2 and "the arguments are not JSON" in result.stderr


# --- tools (POST /v1/tools/call) ----------------------------------------------------------------


def add(a: int, b: int) -> int:
    """The python tool the gateway below runs (tests.test_cli_client:add)."""
    return a + b


def explode() -> None:
    raise RuntimeError("boom")


def tools_config(fake: FakeOpenAI | None) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    registry = [
        {
            "id": "math.add",
            "executor": "python",
            "target": "tests.test_cli_client:add",
            "description": "Add two integers.",
            "input_schema": schema,
        },
        {"id": "explode", "executor": "python", "target": "tests.test_cli_client:explode"},
    ]
    return {
        **fake_models(fake),
        "plugins": {"enabled": ["tools"]},
        "tools": {"registry": registry},
    }


def test_tool_lists_calls_and_exits_non_zero_when_a_tool_fails(tmp_path: Path) -> None:
    with serve_in_thread(tools_config, FakeOpenAI()) as served:
        env = cli_env(tmp_path, TURNOUT_URL=served.url, TURNOUT_ADMIN_KEY=ADMIN_KEY)
        listing = turnout("tool", env=env)
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.splitlines()[0].split() == ["TOOL", "DESCRIPTION"]
        assert "math.add  Add two integers." in listing.stdout
        assert {t["id"] for t in json_of(turnout("tool", "--json", env=env))["data"]} == {
            "math.add",
            "explode",
        }

        result = turnout("tool", "math.add", '{"a": 2, "b": 40}', env=env)
        assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr
        answer = json_of(turnout("tool", "math.add", "-", "--json", env=env, stdin='{"a":1,"b":1}'))
        assert answer["ok"] is True and answer["result"] == 2

        failed = turnout("tool", "explode", env=env)
        assert one_error_line(failed) == (
            "error: tool explode failed: tool 'explode' raised RuntimeError: boom"
        )
        assert failed.stdout == ""
        bad = turnout("tool", "math.add", '{"a": "two"}', "--json", env=env)
        assert bad.returncode == 1
        assert json.loads(bad.stdout)["ok"] is False
        assert "input_schema" in json.loads(bad.stdout)["error"]
        missing = turnout("tool", "nope", env=env)
        assert one_error_line(missing) == "error: tool nope failed: no tool named 'nope'"


# --- status and switch on real llama-server engines ---------------------------------------------


@pytest.fixture
def engines(tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[Served]:
    from tests.test_engines import role

    broken = {
        "engine": "llamacpp",
        "model": "unused",
        "start_timeout_seconds": 10,
        "command": [sys.executable, "-c", "import sys; sys.exit(3)", "${PORT}"],
    }

    def raw(_: FakeOpenAI | None) -> dict[str, Any]:
        roles = {
            "fast": role(tiny_models["tiny-hello"]),
            "coder": role(tiny_models["tiny-toolcall"]),
            "broken": broken,
        }
        return {
            "roles": roles,
            "engines": {
                "max_wait_seconds": 2,
                "wait_timeout_seconds": 60,
                "log_dir": str(tmp_path),
            },
            "routing": {"retries": 0},
            "auth": {"admin_key": ADMIN_KEY},
        }

    with serve_in_thread(raw) as running:
        yield running


@pytest.mark.engine
def test_status_and_switch_follow_real_engines(engines: Served, tmp_path: Path) -> None:
    env = cli_env(tmp_path, TURNOUT_URL=engines.url, TURNOUT_ADMIN_KEY=ADMIN_KEY)
    before = turnout("status", env=env)
    assert before.returncode == 0, before.stderr
    assert "engine    idle, loaded: none" in before.stdout
    rows = {line.split()[0]: line.split() for line in before.stdout.splitlines() if line.strip()}
    assert rows["fast"][1:3] == ["stopped", "llamacpp"] and rows["coder"][1] == "stopped"

    started = time.perf_counter()
    switched = turnout("switch", "fast", env=env)
    assert switched.returncode == 0, switched.stderr
    progress = switched.stdout.splitlines()
    # Real stages, not a spinner. The events are read from when the switch was accepted, so a
    # tiny model may already be past "starting" by then: its next stage is shown instead.
    shown = [line.split()[1:] for line in progress[:-1]]
    assert ["starting", "role", "fast"] in shown or ["loading", "role", "fast"] in shown, progress
    assert progress[-1].startswith("fast is ready (")
    print(f"switch fast: {time.perf_counter() - started:.2f} s, progress {progress}")

    status = turnout("status", env=env).stdout
    assert "engine    ready, loaded: fast" in status
    fast = next(line.split() for line in status.splitlines() if line.startswith("  fast "))
    assert fast[1] == "ready" and fast[3].isdigit() and fast[4].endswith("s")

    verdict = json_of(turnout("switch", "coder", "--json", env=env))
    assert verdict["ok"] is True and verdict["from"] == "fast" and verdict["role"] == "coder"
    assert verdict["elapsed_seconds"] > 0
    again = turnout("switch", "coder", env=env)
    assert again.returncode == 0 and again.stdout.startswith("coder is ready")
    state = json_of(turnout("status", "--json", env=env))
    assert state["role"] == "coder" and state["engines"]["fast"]["state"] == "stopped"

    failed = turnout("switch", "broken", env=env)
    assert failed.returncode == 1
    line = one_error_line(failed)
    assert line.startswith("error: broken failed to load: ") and "code 3" in line, line
    status = turnout("status", env=env).stdout
    assert "recent errors\n  role broken: " in status and "code 3" in status
    as_json = turnout("switch", "broken", "--json", env=env)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["status"] == "failed"

    asked = turnout("switch", "fast", "--no-wait", env=env)
    # The failed switch had already evicted coder to make room: nothing is loaded now.
    assert (asked.returncode, asked.stdout) == (0, "switching to fast (from nothing)\n")
    deadline = time.monotonic() + 60
    while json_of(turnout("status", "--json", env=env))["role"] != "fast":
        assert time.monotonic() < deadline, "fast never became ready after --no-wait"
        time.sleep(0.2)
