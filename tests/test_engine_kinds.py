"""Engine kinds come from a registry: a third-party kind serves chat without touching turnout.

Adding a kind is one new module and one registration line. The module is ``FakeServerKind``
below (an ``EngineKind`` and the hook that registers it); its engine is a real server process,
``python -m tests.fakes.openai_upstream``, that turnout spawns on a loopback port of its choice,
health-checks and stops like llama-server. The registration line is the entry point a package
declares (``fakeserver = tests.test_engine_kinds:FakeServerKind`` in the ``turnout`` group,
installed here as pip would), enabled with ``plugins: {enabled: [fakeserver]}``::

    @hookimpl
    def register_engine_kinds(self, kinds):
        kinds.register(EngineKind(name="fake-server", adapter="openai-compatible",
                                  driver=spawn_driver, spawns=True, command=(...)))
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import from_mapping
from gateway.engines.builtin import builtin_kinds
from gateway.engines.kinds import EngineKind, EngineKinds, spawn_driver
from gateway.errors import ConfigError
from gateway.plugins.hookspecs import hookimpl
from tests.gateway_server import config_of, running_gateway

ROOT = Path(__file__).resolve().parent.parent
FAKE_SERVER = (
    sys.executable,
    "-m",
    "tests.fakes.openai_upstream",
    "--host",
    "${HOST}",
    "--port",
    "${PORT}",
)


class FakeServerKind:
    """The whole third-party kind: a server turnout spawns, spoken to as OpenAI-compatible."""

    @hookimpl
    def register_engine_kinds(self, kinds: EngineKinds) -> None:
        kinds.register(
            EngineKind(
                name="fake-server",
                adapter="openai-compatible",
                driver=spawn_driver,
                command=FAKE_SERVER,
                spawns=True,
                base_url="forbidden",
            )
        )


@pytest.fixture
def fakeserver_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registration line: an entry point in the ``turnout`` group, as pip installs it."""
    dist_info = tmp_path / "fakeserver-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fakeserver\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        "[turnout]\nfakeserver = tests.test_engine_kinds:FakeServerKind\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def fake_role(**fields: Any) -> dict[str, Any]:
    return {
        "engine": "fake-server",
        "model": "fake-model",
        # The engine process imports tests.fakes: run it from the checkout.
        "env": {"PYTHONPATH": str(ROOT)},
        "start_timeout_seconds": 60,
        **fields,
    }


async def test_a_plugin_engine_kind_spawns_its_server_and_serves_chat(
    fakeserver_installed: None,
) -> None:
    config = config_of({"plugins": {"enabled": ["fakeserver"]}, "roles": {"local": fake_role()}})
    async with running_gateway(config) as gw:
        reply = await gw.openai().chat.completions.create(
            model="local", messages=[{"role": "user", "content": "ping"}]
        )
        assert reply.choices[0].message.content == "echo: ping"
        async with (
            aiohttp.ClientSession() as session,
            session.get(gw.url + "/engine/status") as response,
        ):
            engine = (await response.json())["engines"]["local"]
        assert engine["engine"] == "fake-server"
        assert engine["state"] == "ready"
        assert isinstance(engine["pid"], int) and engine["port"]


def test_an_unknown_engine_kind_is_one_line_naming_the_known_ones() -> None:
    raw = {"roles": {"coder": {"engine": "sglang", "model": "/m.gguf"}}}
    with pytest.raises(ConfigError) as caught:
        from_mapping(raw, "test", {})
    message = str(caught.value)
    assert "\n" not in message
    assert "roles.coder.engine: unknown engine kind 'sglang'" in message
    assert "(known: external, llamacpp, llamacpp-router, mlx, ollama, vllm)" in message


def test_a_plugin_kind_is_known_once_its_plugin_is_enabled(fakeserver_installed: None) -> None:
    raw: dict[str, Any] = {"roles": {"local": fake_role()}}
    with pytest.raises(ConfigError, match=r"unknown engine kind 'fake-server' \(known: external,"):
        from_mapping(raw, "test", {})
    config = from_mapping({**raw, "plugins": {"enabled": ["fakeserver"]}}, "test", {})
    # The kind's defaults were applied on load: requests carry the role's model name.
    assert config.roles["local"].upstream_model == "fake-model"
    wrong = {
        "plugins": {"enabled": ["fakeserver"]},
        "roles": {"local": fake_role(base_url="http://h")},
    }
    with pytest.raises(ConfigError, match=r"roles\.local\.base_url: turnout starts fake-server"):
        from_mapping(wrong, "test", {})


def test_built_in_kinds_keep_their_upstream_model_names() -> None:
    raw = {
        "roles": {
            "fast": {"engine": "llamacpp", "model": "/m.gguf"},
            "apple": {"engine": "mlx", "model": "mlx-community/x"},
            "o": {"engine": "ollama", "model": "qwen3:4b", "base_url": "http://h:11434"},
            "ext": {"engine": "external", "model": "", "base_url": "http://h/v1"},
        }
    }
    roles = from_mapping(raw, "test", {}).roles
    assert {name: role.upstream_model for name, role in roles.items()} == {
        "fast": "fast",
        "apple": "default_model",
        "o": "qwen3:4b",
        "ext": "",
    }


def test_a_kind_registered_twice_is_refused() -> None:
    kinds = builtin_kinds()
    with pytest.raises(ValueError, match="'llamacpp' is registered twice"):
        kinds.register(kinds["llamacpp"])
