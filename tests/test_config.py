"""routing.yaml loading: interpolation, validation messages that name the key path, the CLI check."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load, parse, warnings
from gateway.errors import ConfigError
from gateway.plugins.tools.settings import settings_of as tools_settings

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
providers:
  local: {kind: llamacpp, base_url: "http://127.0.0.1:9/v1"}
models:
  - name: m
    targets: [{provider: local, model: tiny}]
"""


def test_shipped_routing_yaml_loads_without_any_engine_or_key() -> None:
    config = load(ROOT / "routing.yaml")
    assert config.server.host == "127.0.0.1"
    assert {m.name for m in config.models} >= {"local"}


def test_env_interpolation_with_default_and_missing_variable() -> None:
    text = """
providers:
  cloud: {kind: openai, base_url: "${BASE:-https://api.example.com/v1}", api_key: "${KEY}"}
models: []
"""
    config = parse(text, env={})
    cloud = config.providers["cloud"]
    assert cloud.base_url == "https://api.example.com/v1"
    assert cloud.api_key == ""
    assert cloud.missing_env == ("KEY",)
    assert any("KEY is not set" in note for note in warnings(config))

    config = parse(text, env={"KEY": "sk-123", "BASE": "https://other/v1"})
    assert config.providers["cloud"].api_key == "sk-123"
    assert config.providers["cloud"].base_url == "https://other/v1"
    assert config.providers["cloud"].missing_env == ()


def test_wrong_type_names_the_key_path() -> None:
    with pytest.raises(ConfigError, match=r"server\.port: Expected `int`, got `str`"):
        parse("server: {port: eighty}")


def test_unknown_key_is_an_error_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]: unknown key `tagets`"):
        parse("models: [{name: m, tagets: []}]")


def test_unknown_provider_reference_lists_known_ones() -> None:
    text = MINIMAL.replace("provider: local", "provider: nope")
    with pytest.raises(
        ConfigError,
        match=r"models\[0\]\.targets\[0\]\.provider: unknown provider 'nope' \(providers: local\)",
    ):
        parse(text)


def test_stream_deadlines_and_event_size_are_validated_with_their_key_paths() -> None:
    text = MINIMAL.replace(
        '"http://127.0.0.1:9/v1"}',
        '"http://127.0.0.1:9/v1", timeouts: {idle: 0, max_stream: -1, max_event_bytes: 10, '
        "max_body_bytes: 10}}",
    )
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert "providers.local.timeouts.idle: expected a number > 0" in message
    assert "providers.local.timeouts.max_stream: expected seconds >= 0 (0 = unlimited)" in message
    assert "providers.local.timeouts.max_event_bytes: expected at least 1024 bytes" in message
    assert "providers.local.timeouts.max_body_bytes: expected at least 1024 bytes" in message
    defaults = parse(MINIMAL).providers["local"].timeouts
    assert (defaults.max_stream, defaults.max_event_bytes) == (1800.0, 16 * 1024 * 1024)
    assert defaults.max_body_bytes == 64 * 1024 * 1024


def test_usage_flush_interval_and_python_tool_threads_are_validated_with_their_key_paths() -> None:
    text = MINIMAL + "\nusage: {flush_interval_seconds: 0}\ntools: {python_threads: 0}\n"
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert "usage.flush_interval_seconds: expected a number > 0" in message
    assert "tools.python_threads: expected a number >= 1" in message
    defaults = parse(MINIMAL)
    threads = tools_settings(defaults).python_threads
    assert (defaults.usage.flush_interval_seconds, threads) == (0.1, 8)


def test_duplicate_alias_is_rejected() -> None:
    text = (
        MINIMAL
        + """
  - name: other
    aliases: [m]
    targets: [{provider: local, model: tiny}]
"""
    )
    with pytest.raises(ConfigError, match="alias 'm' already used"):
        parse(text)


def test_local_is_inferred_from_the_host() -> None:
    config = parse("""
providers:
  a: {kind: openai, base_url: "http://127.0.0.1:1/v1"}
  b: {kind: openai, base_url: "http://192.168.1.5:1/v1"}
  c: {kind: openai, base_url: "https://api.openai.com/v1"}
  d: {kind: openai, base_url: "http://127.0.0.1:1/v1", local: false}
""")
    assert [config.providers[n].is_local for n in "abcd"] == [True, True, False, False]


def test_local_only_model_with_cloud_target_warns() -> None:
    text = """
providers:
  cloud: {kind: openai, base_url: "https://api.openai.com/v1", api_key: k}
models:
  - name: private
    local_only: true
    targets: [{provider: cloud, model: x}]
"""
    config = parse(text)
    assert any("local_only" in note and "never be used" in note for note in warnings(config))


def test_turnout_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    assert main(["check", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: {port: [1]}")
    assert main(["check", str(bad)]) == 1
    assert "server.port" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.yaml")]) == 1
    invalid_yaml = tmp_path / "broken.yaml"
    invalid_yaml.write_text("models: [")
    assert main(["check", str(invalid_yaml)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_engine_scheduling_keys_are_validated_with_their_key_paths() -> None:
    roles = "\nroles:\n  fast: {engine: llamacpp, model: /m/fast.gguf, priority: 3}\n"
    keys = "min_residency_seconds: -1, default_role: slow, return_after_idle_seconds: 5"
    keys += ", memory_budget_mb: -1"
    text = MINIMAL + roles + "engines: {" + keys + "}\n"
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert "engines.min_residency_seconds: expected a number >= 0" in message
    assert "engines.memory_budget_mb: expected MB >= 0" in message
    assert "engines.default_role: unknown role 'slow' (roles: fast)" in message
    alone = MINIMAL + roles + "engines: {return_after_idle_seconds: 5}\n"
    with pytest.raises(ConfigError, match=r"engines\.return_after_idle_seconds: expected engines"):
        parse(alone)
    agents = parse(MINIMAL + roles + "engines: {agent_priority: {orchestrator: 10}}\n").engines
    assert agents.agent_priority == {"orchestrator": 10}
    fifo = parse(MINIMAL + roles + "engines: {grouping: false}\n").engines
    assert (fifo.grouping, fifo.min_residency_seconds, fifo.default_role) == (False, 0, "")
