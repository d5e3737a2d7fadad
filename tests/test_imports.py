"""``turnout import litellm|llama-swap``: real example configs from those projects' docs
(tests/fixtures/imports/, each naming its source) become routing files ``turnout check``
accepts, and what cannot be mapped is reported by key path (issue 16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config.loading import from_mapping
from gateway.errors import NotAConfig
from gateway.imports.litellm import from_litellm
from gateway.imports.llama_swap import from_llama_swap
from gateway.imports.report import Imported, document, render
from tests.engines.engines import HELLO_TEXT, llama_server_binary
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import config_of, running_gateway

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "imports"
EXAMPLES = sorted(FIXTURES.glob("*.yaml"))


def tool_of(path: Path) -> str:
    return "llama-swap" if path.name.startswith("llama-swap") else "litellm"


def imported(name: str) -> Imported:
    raw = yaml.safe_load((FIXTURES / name).read_text())
    return from_llama_swap(raw) if name.startswith("llama-swap") else from_litellm(raw)


def role(result: Imported, name: str) -> dict[str, Any]:
    roles: dict[str, Any] = document(result)["roles"]
    return dict(roles[name])


def model(result: Imported, name: str) -> dict[str, Any]:
    return next(m for m in document(result)["models"] if m["name"] == name)


@pytest.fixture
def no_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No llama-server or docker on PATH: roles are 'cannot start yet' warnings, as on a machine
    without them, whatever this one has installed."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_real_example_imports_to_a_routing_file_that_check_accepts(
    example: Path, tmp_path: Path, no_engines: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert example.read_text().startswith("# Source: "), "fixtures name their source"
    output = tmp_path / "routing.yaml"
    assert main(["import", tool_of(example), str(example), "-o", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {output}" in printed
    assert main(["check", str(output)]) == 0
    # The comments are comments: the file holds exactly the mapped document.
    text = output.read_text()
    assert text.startswith(
        f"# turnout routing file imported from {'llama-swap' if tool_of(example) == 'llama-swap' else 'LiteLLM'}"
    )
    assert yaml.safe_load(text) == document(imported(example.name))


def test_litellm_deployments_of_one_name_become_one_balanced_model_with_its_fallbacks() -> None:
    result = imported("litellm-load-balancing.yaml")
    zephyr = model(result, "zephyr-beta")
    assert zephyr["balance"] == "weighted"
    # simple-shuffle picks by rpm when every deployment has one; the fallback comes after.
    assert [(t["model"], t.get("weight"), t.get("priority", 0)) for t in zephyr["targets"]] == [
        ("HuggingFaceH4/zephyr-7b-beta", 60, 0),
        ("HuggingFaceH4/zephyr-7b-beta", 600, 0),
        ("HuggingFaceH4/zephyr-7b-beta", 60000, 0),
        ("gpt-4o", None, 1),
    ]
    assert model(result, "gpt-4o")["aliases"] == ["gpt-4"]  # model_group_alias
    doc = document(result)
    # router_settings win over litellm_settings (num_retries 2 over 3).
    assert doc["routing"] == {"retries": 2, "cooldown_seconds": 30}
    assert doc["limits"]["models"]["zephyr-beta"] == {"rpm": 60 + 600 + 60000}
    assert {p["timeouts"]["first_byte"] for p in doc["providers"].values()} == {30}
    # A server of your own needs no key: an unset variable leaves it available.
    assert doc["providers"]["local"]["api_key"] == "${HUGGINGFACE_API_KEY:-}"
    assert any(
        line.startswith("litellm_settings.context_window_fallbacks") for line in result.unmapped
    )
    assert any(line.startswith("router_settings.redis_host") for line in result.unmapped)


def test_litellm_os_environ_keys_become_environment_references() -> None:
    result = imported("litellm-configs-quickstart.yaml")
    providers = document(result)["providers"]
    assert providers["azure"] == {
        "kind": "openai-compatible",
        "base_url": "https://my-endpoint-europe-berri-992.openai.azure.com/openai/v1",
        "headers": {"api-key": "${AZURE_API_KEY_EU}"},
    }
    assert providers["openai"]["headers"]["OpenAI-Organization"] == "org-ikDc4ex8NB"
    assert document(result)["auth"] == {"admin_key": "sk-1234"}
    config = from_mapping(document(result), env={"AZURE_API_KEY_EU": "k"})
    assert config.providers["azure"].headers == {"api-key": "k"}
    assert config.providers["azure-2"].missing_env == ("AZURE_API_KEY_CA",)


def test_litellm_reports_what_turnout_cannot_serve_by_key_path() -> None:
    result = imported("litellm-configs-quickstart.yaml")
    names = [m["name"] for m in document(result)["models"]]
    assert names == ["gpt-4o", "vllm-models", "gpt-4-team2", "openai-gpt-4o"]
    unmapped = "\n".join(result.unmapped)
    for expected in (
        "model_list[1] (bedrock-claude-v1): provider 'bedrock'",
        "model_list[5] (*): wildcard routing",
        "model_list[8] (mistral-7b): api_base 'your_ollama_api_base' is not an http(s) URL",
        "model_list[6] (gpt-4-team2).litellm_params.temperature",
        "litellm_settings.drop_params",
        "general_settings.alerting",
    ):
        assert expected in unmapped
    # Written into the file's header as well.
    assert "#   - model_list[1] (bedrock-claude-v1)" in render(result, "c.yaml", "turnout import")


def test_llama_swap_macros_expand_and_port_stays_turnouts_placeholder() -> None:
    result = imported("llama-swap-config-example.yaml")
    gpt = role(result, "gpt-oss-120b")
    # ${latest-llama} holds --port ${PORT}; the model's own macros win over the global ones.
    assert gpt["command"] == [
        "/path/to/llama-server/llama-server-ec9e0301",
        "--port",
        "${PORT}",
        "--model",
        "${MODEL}",
        "--ctx-size",
        "16384",
        "--temperature",
        "0.7",
    ]
    assert gpt["model"] == "path/to/gpt-oss-120B.gguf"
    assert gpt["context"] == 16384
    # proxy names a fixed port: turnout's ${PORT} is filled with it.
    assert gpt["port"] == 8999
    assert gpt["ttl_seconds"] == 60
    assert gpt["start_timeout_seconds"] == 500  # healthCheckTimeout
    assert gpt["health"] == "/custom-endpoint"
    assert gpt["upstream_model"] == "openai/gpt-oss-120B"
    assert gpt["aliases"] == ["gpt-4o-mini"]
    assert gpt["gpus"] == [0, 1, 2]  # env CUDA_VISIBLE_DEVICES
    docker = role(result, "docker-llama")
    assert docker["command"][:4] == ["docker", "run", "--name", "docker-llama"]  # ${MODEL_ID}
    assert "${PORT}:8080" in docker["command"]
    assert docker["kv_cache"] is False
    assert "models.docker-llama.cmdStop" in "\n".join(result.unmapped)


def test_llama_swap_groups_keep_known_members_and_peers_become_providers() -> None:
    result = imported("llama-swap-config-example.yaml")
    doc = document(result)
    assert doc["engines"]["groups"] == {
        "group1": {"members": ["qwen-unlisted"], "max_loaded": 1},
        "group2": {"members": ["docker-llama"], "max_loaded": 1},
    }
    unmapped = "\n".join(result.unmapped)
    assert "groups.group2.members: 'modelA' is not a model of this config" in unmapped
    assert "groups.forever: no members left" in unmapped
    assert "hooks.on_startup.preload: 'llama' is not a model of this config" in unmapped
    assert "apiKeys: create keys with `turnout keys create`" in unmapped
    assert doc["providers"]["openrouter"] == {
        "kind": "openai-compatible",
        "base_url": "https://openrouter.ai/api/v1",
        "api_key": "${OPENROUTER_API_KEY}",
    }
    assert model(result, "z-ai/glm-4.7")["targets"] == [
        {"provider": "openrouter", "model": "z-ai/glm-4.7"}
    ]


def test_llama_swap_preload_persistent_groups_and_env_macros_map() -> None:
    raw = {
        "macros": {"models": "${env.MODELS_DIR}", "server": "llama-server --port ${PORT}"},
        "models": {
            "embed": {"cmd": "${server} -m ${models}/embed.gguf --embeddings", "ttl": 0},
            "chat": {"cmd": "${server} --model=${models}/chat.gguf -c 8192", "ttl": 300},
        },
        "groups": {"always": {"persistent": True, "swap": False, "members": ["embed"]}},
        "hooks": {"on_startup": {"preload": ["embed"]}},
    }
    result = from_llama_swap(raw)
    doc = document(result)
    assert doc["roles"]["embed"]["model"] == "${MODELS_DIR}/embed.gguf"
    assert doc["roles"]["chat"]["command"][-3:] == ["--model=${MODEL}", "-c", "8192"]
    assert doc["roles"]["chat"]["ttl_seconds"] == 300
    assert "ttl_seconds" not in doc["roles"]["embed"]
    assert doc["engines"] == {
        "groups": {"always": {"members": ["embed"], "max_loaded": 1, "persistent": ["embed"]}},
        "preload": ["embed"],
    }
    assert result.unmapped == []
    config = from_mapping(doc, env={"MODELS_DIR": "/m"})
    assert config.roles["chat"].model == "/m/chat.gguf"
    assert config.roles["chat"].command[2] == "${PORT}"


def test_llama_swap_fixed_ports_and_gpus_of_the_aider_example() -> None:
    result = imported("llama-swap-aider-qwq-coder.yaml")
    coder, qwq = role(result, "qwen-coder-32B"), role(result, "QwQ")
    assert (coder["port"], coder["gpus"], coder["aliases"]) == (8999, [0], ["coder"])
    assert (qwq["port"], qwq["gpus"], qwq["context"]) == (9503, [1], 32000)
    assert result.unmapped == [
        "profiles: no turnout equivalent; a model with several targets or aliases may do"
    ]


def test_a_server_that_ignores_port_is_reported() -> None:
    result = imported("llama-swap-docker.yaml")
    assert "models.z-image.cmd: does not use ${PORT}" in "\n".join(result.unmapped)
    # A Hugging Face model is llama-server's to fetch: the command keeps it.
    assert role(result, "qwen2.5")["model"] == "bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"


async def test_an_imported_litellm_config_serves_and_falls_back() -> None:
    async with FakeOpenAI() as primary, FakeOpenAI() as spare:
        raw = {
            "model_list": [
                {
                    "model_name": "chat",
                    "litellm_params": {"model": "openai/primary-model", "api_base": primary.url},
                },
                {
                    "model_name": "spare",
                    "litellm_params": {"model": "openai/spare-model", "api_base": spare.url},
                },
            ],
            "router_settings": {"fallbacks": [{"chat": ["spare"]}], "num_retries": 0},
        }
        config = config_of(document(from_litellm(raw)))
        primary.fail_next(1, status=503)
        async with running_gateway(config) as gateway:
            reply = await gateway.openai().chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}]
            )
        assert reply.choices[0].message.content
        assert [r.model for r in spare.requests if r.method == "POST"] == ["spare-model"]


def test_import_refuses_unreadable_input_and_overwrites_only_when_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", "litellm", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: [unclosed\n")
    assert main(["import", "litellm", str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    bad.write_text("models: {}\n")  # llama-swap's, not LiteLLM's
    assert main(["import", "litellm", str(bad)]) == 2
    assert "not a LiteLLM config" in capsys.readouterr().err
    with pytest.raises(NotAConfig):
        from_llama_swap(["a", "list"])
    output = tmp_path / "routing.yaml"
    output.write_text("keep me\n")
    example = str(FIXTURES / "litellm-ollama-aliases.yaml")
    assert main(["import", "litellm", example, "-o", str(output)]) == 2
    assert output.read_text() == "keep me\n"
    assert main(["import", "litellm", example, "-o", str(output), "--force"]) == 0
    assert "ollama" in output.read_text()


def test_import_to_stdout_keeps_the_report_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "litellm", str(FIXTURES / "litellm-ollama-aliases.yaml")]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["providers"]["ollama"]["kind"] == "ollama"
    assert "not mapped: model_list[2] (gpt-3.5-turbo).litellm_params.temperature" in captured.err


def test_llama_swap_aliases_that_name_another_model_are_dropped_and_reported() -> None:
    raw = {
        "models": {
            "a": {"cmd": "llama-server --port ${PORT} -m a.gguf", "aliases": ["b", "x"]},
            "b": {"cmd": "llama-server --port ${PORT} -m b.gguf", "aliases": ["x"]},
        }
    }
    result = from_llama_swap(raw)
    assert document(result)["roles"]["a"]["aliases"] == ["x"]
    assert "aliases" not in document(result)["roles"]["b"]
    assert result.unmapped == [
        "models.a.aliases: 'b' already names another model",
        "models.b.aliases: 'x' already names another model",
    ]
    from_mapping(document(result), env={})


def test_import_warns_when_the_result_would_not_load_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AZURE_API_BASE", raising=False)
    monkeypatch.chdir(tmp_path)  # check reads ./turnout.db: this test's own
    source = tmp_path / "litellm.yaml"
    source.write_text(
        "model_list:\n"
        "  - model_name: azure-embeddings\n"
        "    litellm_params:\n"
        "      model: azure/azure-embedding-model\n"
        "      api_base: os.environ/AZURE_API_BASE\n"
        "      api_key: os.environ/AZURE_API_KEY\n"
    )
    output = tmp_path / "routing.yaml"
    assert main(["import", "litellm", str(source), "-o", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "warning: turnout check will refuse it until fixed" in printed
    assert "providers.azure.base_url" in printed
    monkeypatch.setenv("AZURE_API_BASE", "https://example.openai.azure.com")
    assert main(["check", str(output)]) == 0


@pytest.mark.engine
async def test_an_imported_llama_swap_model_starts_on_its_first_request(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    binary = llama_server_binary()
    raw = {
        "healthCheckTimeout": 60,
        "macros": {"server": f"{binary} --host 127.0.0.1 --port ${{PORT}} -t 1 -np 1"},
        "models": {
            "hello": {
                "cmd": f"${{server}}\n-m {tiny_models['tiny-hello']}\n--ctx-size 512",
                "aliases": ["greeter"],
                "ttl": 60,
            }
        },
    }
    result = from_llama_swap(raw)
    assert result.unmapped == []
    config = config_of({**document(result), "engines": {"log_dir": str(tmp_path)}})
    assert config.roles["hello"].model == str(tiny_models["tiny-hello"])
    async with running_gateway(config) as gateway:
        reply = await gateway.openai().chat.completions.create(
            model="greeter", messages=[{"role": "user", "content": "hi"}], max_tokens=16
        )
    assert reply.choices[0].message.content == HELLO_TEXT
