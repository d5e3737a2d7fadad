"""``turnout launch``: each client's session settings (pure), the command's effects with a
stand-in client, and the real Claude Code / Codex / opencode against a real gateway.

The real clients come from npm once (tests/agent_clients.py, cached under ~/.cache/turnout);
these tests skip only when npm is missing. The gateway's upstream is a fake on a loopback port,
which records the model each request was routed to. Claude Code and Codex then run offline;
opencode fetches its provider package from npm on first use (into the same cache).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import launch
from gateway.config import from_mapping
from gateway.launch import Session
from tests.agent_clients import ensure_clients
from tests.cli_harness import ROOT, Served, cli_env, serve_in_thread, turnout
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.scripted_session import ScriptedSession

SESSION = Session(
    url="http://127.0.0.1:9999",
    key="sk-test",
    main="coder",
    small="fast",
    contexts={"coder": 32768, "fast": 8192},
)

# ---------------------------------------------------------------- pure: each client's plan


def test_claude_gets_base_url_token_models_by_role_and_compact_window() -> None:
    plan = launch.claude_plan(SESSION, ["-p", "hi"])
    assert plan.argv == ("claude", "-p", "hi")
    env = plan.env
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9999"
    assert env["ANTHROPIC_AUTH_TOKEN"] == "sk-test"
    assert env["ANTHROPIC_MODEL"] == "coder"
    assert env["ANTHROPIC_DEFAULT_OPUS_MODEL"] == env["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "coder"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == env["ANTHROPIC_SMALL_FAST_MODEL"] == "fast"
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "32768"
    assert env["CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY"] == "1"
    assert env["DISABLE_TELEMETRY"] == "1"
    # the user's own Anthropic key would travel beside ours
    assert "ANTHROPIC_API_KEY" in plan.unset


def test_claude_without_a_known_window_leaves_compaction_to_the_client() -> None:
    plan = launch.claude_plan(Session("http://h", "k", "big", "big"), [])
    assert "CLAUDE_CODE_AUTO_COMPACT_WINDOW" not in plan.env


def test_codex_overrides_are_valid_toml_and_select_a_responses_provider() -> None:
    plan = launch.codex_plan(SESSION, ["exec", "hi"])
    assert plan.argv[-2:] == ("exec", "hi")
    overrides = [plan.argv[i + 1] for i, a in enumerate(plan.argv) if a == "-c"]
    settings: dict[str, Any] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        settings[key] = tomllib.loads(f"v = {value}")["v"]
    assert settings == {
        "model_provider": "turnout",
        "model": "coder",
        "model_providers.turnout.name": "turnout",
        "model_providers.turnout.base_url": "http://127.0.0.1:9999/v1",
        "model_providers.turnout.env_key": "TURNOUT_API_KEY",
        "model_providers.turnout.wire_api": "responses",
        "model_providers.turnout.supports_websockets": True,
        "check_for_update_on_startup": False,
        "model_context_window": 32768,
    }
    assert plan.env == {"TURNOUT_API_KEY": "sk-test"}
    assert not plan.files  # nothing written, not even a temporary CODEX_HOME


def test_opencode_gets_an_inline_openai_compatible_provider_with_limits() -> None:
    plan = launch.opencode_plan(SESSION, ["run", "hi"])
    config = json.loads(plan.env["OPENCODE_CONFIG_CONTENT"])
    provider = config["provider"]["turnout"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:9999/v1"
    assert provider["options"]["apiKey"] == "{env:TURNOUT_API_KEY}"
    assert plan.env["TURNOUT_API_KEY"] == "sk-test"
    assert provider["models"]["coder"]["limit"]["context"] == 32768
    assert provider["models"]["fast"]["limit"]["context"] == 8192
    assert config["model"] == "turnout/coder" and config["small_model"] == "turnout/fast"
    assert plan.argv == ("opencode", "run", "hi")


def test_aider_gets_openai_env_model_prefix_and_a_temporary_metadata_file() -> None:
    plan = launch.aider_plan(SESSION, ["--yes"])
    assert plan.env == {"OPENAI_API_BASE": "http://127.0.0.1:9999/v1", "OPENAI_API_KEY": "sk-test"}
    argv, _ = launch.resolve_plan(plan, "/tmp/x")
    assert argv[argv.index("--model") + 1] == "openai/coder"
    assert argv[argv.index("--weak-model") + 1] == "openai/fast"
    assert argv[argv.index("--model-metadata-file") + 1] == "/tmp/x/model-metadata.json"
    assert argv[-1] == "--yes"
    metadata = json.loads(plan.files["model-metadata.json"])
    assert metadata["openai/coder"]["max_input_tokens"] == 32768


def test_child_environment_drops_unset_names_and_keeps_the_rest() -> None:
    plan = launch.claude_plan(SESSION, [])
    env = launch.child_environment(plan, {"ANTHROPIC_API_KEY": "mine", "PATH": "/bin"}, "/t")
    assert "ANTHROPIC_API_KEY" not in env and env["PATH"] == "/bin"
    assert env["ANTHROPIC_BASE_URL"] == SESSION.url


# ---------------------------------------------------------------- pure: models and windows


def entries(*models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return launch.listed({"data": list(models)})


def test_default_models_prefer_the_agent_model_and_the_fast_role() -> None:
    found = entries({"id": "local"}, {"id": "agent-coder"}, {"id": "coder"}, {"id": "fast"})
    assert launch.pick_models(found, None) == ("agent-coder", "fast")
    assert launch.pick_models(found, "local") == ("local", "fast")


def test_without_preferred_models_the_first_available_one_serves_both_roles() -> None:
    found = entries({"id": "down", "available": False}, {"id": "up"}, {"id": "x", "alias_of": "up"})
    assert launch.pick_models(found, None) == ("up", "up")


def test_context_window_comes_from_the_gateway_first_then_the_routing_file() -> None:
    found = entries({"id": "coder", "context_window": 65536}, {"id": "fast"})
    from_file = {"coder": 32768, "fast": 8192}.get
    assert launch.context_windows(found, ("coder", "fast"), from_file) == {
        "coder": 65536,
        "fast": 8192,
    }
    assert launch.context_windows(found, ("other",), lambda name: None) == {}


def test_an_alias_shares_its_models_window() -> None:
    found = entries({"id": "coder", "context_window": 4096}, {"id": "c", "alias_of": "coder"})
    assert launch.context_windows(found, ("c",), lambda name: None) == {"c": 4096}


def test_routing_file_window_follows_a_models_role_target() -> None:
    config = from_mapping(
        {
            "roles": {
                "coder": {
                    "engine": "external",
                    "model": "m",
                    "base_url": "http://h/v1",
                    "context": 32768,
                    "aliases": ["c"],
                },
            },
            "providers": {"cloud": {"kind": "openai", "base_url": "http://h/v1", "api_key": "k"}},
            "models": [
                {
                    "name": "agent-coder",
                    "targets": [
                        {"provider": "cloud", "model": "x", "priority": 1},
                        {"role": "coder"},
                    ],
                },
                {"name": "cloud-only", "targets": [{"provider": "cloud", "model": "x"}]},
            ],
        },
        "test",
        {},
    )
    assert launch.config_window(config, "agent-coder") == 32768
    assert launch.config_window(config, "coder") == 32768
    assert launch.config_window(config, "c") == 32768
    assert launch.config_window(config, "cloud-only") is None


def test_arguments_after_double_dash_go_to_the_client() -> None:
    own, rest = launch.split_passthrough(["launch", "claude", "--model", "m", "--", "-p", "--x"])
    assert own == ["launch", "claude", "--model", "m"] and rest == ["-p", "--x"]
    assert launch.split_passthrough(["chat", "--", "x"]) == (["chat", "--", "x"], [])


# ---------------------------------------------------------------- effects, with a stand-in client


def gateway_config(fake: FakeOpenAI | None) -> dict[str, Any]:
    assert fake is not None
    return {
        "providers": {"up": {"kind": "openai-compatible", "base_url": fake.url, "local": True}},
        "models": [
            {"name": "coder", "targets": [{"provider": "up", "model": "coder-upstream"}]},
            {"name": "fast", "targets": [{"provider": "up", "model": "fast-upstream"}]},
        ],
        "routing": {"retries": 0},
    }


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve_in_thread(gateway_config, FakeOpenAI()) as running:
        yield running


def stand_in(folder: Path, name: str, code: int = 0) -> Path:
    """An executable called ``name`` that records its argv, env and files, then exits ``code``."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, pathlib\n"
        "files = {}\n"
        "for a in sys.argv:\n"
        "    if a.endswith('.json') and os.path.exists(a):\n"
        "        files[a] = pathlib.Path(a).read_text()\n"
        "out = {'argv': sys.argv[1:], 'env': dict(os.environ), 'files': files}\n"
        "pathlib.Path(os.environ['STAND_IN_OUT']).write_text(json.dumps(out))\n"
        f"sys.exit({code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def launch_env(home: Path, bin_dir: Path, **extra: str) -> dict[str, str]:
    env = cli_env(home, STAND_IN_OUT=str(home / "out.json"), **extra)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_launch_runs_the_client_with_session_settings_and_passes_its_exit_status(
    served: Served, tmp_path: Path
) -> None:
    stand_in(tmp_path / "bin", "claude", code=7)
    env = launch_env(tmp_path, tmp_path / "bin", ANTHROPIC_API_KEY="users-own-key")
    result = turnout("launch", "claude", "--url", served.url, "--", "-p", "hi", env=env)
    assert result.returncode == 7, result.stderr
    seen = json.loads((tmp_path / "out.json").read_text())
    assert seen["argv"] == ["-p", "hi"]
    assert seen["env"]["ANTHROPIC_BASE_URL"] == served.url
    assert seen["env"]["ANTHROPIC_MODEL"] == "coder"
    assert seen["env"]["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "fast"
    assert seen["env"]["ANTHROPIC_AUTH_TOKEN"] == launch.KEYLESS
    assert "ANTHROPIC_API_KEY" not in seen["env"]


def test_launch_uses_the_key_and_model_given(served: Served, tmp_path: Path) -> None:
    stand_in(tmp_path / "bin", "codex")
    env = launch_env(tmp_path, tmp_path / "bin", TURNOUT_API_KEY="sk-mine")
    result = turnout("launch", "codex", "--url", served.url, "--model", "fast", env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "out.json").read_text())
    assert 'model="fast"' in seen["argv"]
    assert seen["env"]["TURNOUT_API_KEY"] == "sk-mine"


def test_a_model_the_gateway_does_not_list_is_noted_and_still_passed_on(
    served: Served, tmp_path: Path
) -> None:
    stand_in(tmp_path / "bin", "claude")
    env = launch_env(tmp_path, tmp_path / "bin")
    result = turnout("launch", "claude", "--url", served.url, "--model", "claude-x", env=env)
    assert result.returncode == 0, result.stderr
    assert "note: the gateway does not list model 'claude-x'" in result.stderr
    seen = json.loads((tmp_path / "out.json").read_text())
    assert seen["env"]["ANTHROPIC_MODEL"] == "claude-x"


def test_a_roles_context_window_comes_from_the_running_gateway(tmp_path: Path) -> None:
    def with_role(fake: FakeOpenAI | None) -> dict[str, Any]:
        assert fake is not None
        role = {"engine": "external", "model": "m", "base_url": fake.url, "context": 16384}
        return {**gateway_config(fake), "roles": {"coder": role}, "models": []}

    stand_in(tmp_path / "bin", "claude")
    env = launch_env(tmp_path, tmp_path / "bin")
    with serve_in_thread(with_role, FakeOpenAI()) as running:
        result = turnout("launch", "claude", "--url", running.url, env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "out.json").read_text())
    assert seen["env"]["ANTHROPIC_MODEL"] == "coder"
    assert seen["env"]["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "16384"


def test_temporary_files_exist_while_the_client_runs_and_are_gone_after(
    served: Served, tmp_path: Path
) -> None:
    stand_in(tmp_path / "bin", "aider")
    config = tmp_path / "routing.yaml"
    config.write_text(
        "roles:\n  coder: {engine: external, model: m, base_url: 'http://127.0.0.1:1/v1', "
        "context: 16384}\n"
    )
    env = launch_env(tmp_path, tmp_path / "bin")
    result = turnout(
        "launch", "aider", "--url", served.url, "--config", str(config), "--model", "coder", env=env
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "out.json").read_text())
    (path, content), *_ = seen["files"].items()
    assert json.loads(content)["openai/coder"]["max_input_tokens"] == 16384
    assert not Path(path).exists()
    assert not Path(path).parent.exists()


def test_a_missing_client_is_one_line_naming_the_install_command(tmp_path: Path) -> None:
    env = cli_env(tmp_path, PATH=str(tmp_path / "empty"))
    result = turnout("launch", "codex", "--url", "http://127.0.0.1:9", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: codex is not installed (install it with: npm install -g @openai/codex)"
    ]


def test_an_unreachable_gateway_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    stand_in(tmp_path / "bin", "claude")
    env = launch_env(tmp_path, tmp_path / "bin")
    result = turnout("launch", "claude", "--url", "http://127.0.0.1:9", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no usable turnout gateway at ")
    assert not (tmp_path / "out.json").exists()


# ---------------------------------------------------------------- the real clients


@pytest.fixture(scope="module")
def clients_bin() -> Path:
    try:
        found = ensure_clients()
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.fail(f"installing the clients from npm failed: {exc}")
    if found is None:
        pytest.skip("npm is not installed")
    return found


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("hello\n")
    with serve_in_thread(gateway_config, ScriptedSession(str(workdir))) as running:
        yield running, workdir


def real_client_env(home: Path, clients_bin: Path) -> dict[str, str]:
    env = cli_env(home)
    env = {k: v for k, v in env.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    env["PATH"] = f"{clients_bin}{os.pathsep}{env.get('PATH', '')}"
    # opencode installs its provider package with npm on first use: keep that in the cache.
    env["npm_config_cache"] = str(clients_bin.parent.parent / "npm-cache")
    return env


def upstream_models(served: Served) -> list[str | None]:
    assert served.fake is not None
    return [r.model for r in served.fake.requests if r.path.endswith("/chat/completions")]


def launch_to_the_upstream(
    served: Served, env: dict[str, str], timeout: float, client: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Launch ``client`` once: it must exit 0 having asked the upstream for the mapped model."""
    assert served.fake is not None
    served.fake.reset()
    result = turnout("launch", client, "--url", served.url, "--", *args, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "coder-upstream" in upstream_models(served)
    return result


def test_claude_code_print_mode_reaches_the_upstream_with_the_mapped_model(
    clients_bin: Path, served: Served, tmp_path: Path
) -> None:
    env = real_client_env(tmp_path, clients_bin)
    result = launch_to_the_upstream(served, env, 120, "claude", "-p", "hi")
    assert "echo:" in result.stdout


def edit_notes_through_the_gateway(
    scripted: tuple[Served, Path], env: dict[str, str], client: str, *args: str
) -> None:
    """Launch ``client`` in the scripted workdir: its tool loop must leave notes.txt edited."""
    served, workdir = scripted
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "launch", client, "--url", served.url, "--", *args],
        cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert (workdir / "notes.txt").read_text() == "hello, turnout\n"


def test_claude_code_runs_a_tool_loop_through_the_gateway(
    clients_bin: Path, scripted: tuple[Served, Path], tmp_path: Path
) -> None:
    edit_notes_through_the_gateway(
        scripted, real_client_env(tmp_path, clients_bin),
        "claude", "-p", "edit notes.txt", "--allowedTools", "Read,Bash,Edit",
    )  # fmt: skip


def test_codex_runs_a_tool_loop_through_the_gateway(
    clients_bin: Path, scripted: tuple[Served, Path], tmp_path: Path
) -> None:
    edit_notes_through_the_gateway(
        scripted, real_client_env(tmp_path, clients_bin),
        "codex", "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
        "edit notes.txt",
    )  # fmt: skip


def test_codex_exec_reaches_the_upstream_through_the_responses_api(
    clients_bin: Path, served: Served, tmp_path: Path
) -> None:
    env = real_client_env(tmp_path, clients_bin)
    launch_to_the_upstream(served, env, 120, "codex", "exec", "--skip-git-repo-check", "hi")
    assert not (tmp_path / ".codex" / "config.toml").exists()  # no file of the user's written


def test_opencode_run_reaches_the_upstream_with_the_mapped_model(
    clients_bin: Path, served: Served, tmp_path: Path
) -> None:
    env = real_client_env(tmp_path, clients_bin)
    launch_to_the_upstream(served, env, 180, "opencode", "run", "hi")
