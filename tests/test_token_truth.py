"""Token and context truth without an engine: count_tokens (keys, forwarding to Anthropic, the
marked estimate), /v1/models filtered by key and in Anthropic's shape, roles with no model.

The same features against a real llama-server are in tests/test_token_truth_llamacpp.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam, ToolParam

from adapters.llamacpp import _context_error
from gateway.api.models import anthropic_entry, anthropic_list
from gateway.cli import main
from gateway.config import Model, Target, from_mapping
from gateway.errors import ConfigError, ContextExceeded, UpstreamStatus, openai_envelope
from gateway.keys import connect, create_key
from gateway.translate.anthropic_replies import error_body
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

HI: list[MessageParam] = [{"role": "user", "content": "hello there, how many tokens is this?"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def openai_up() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
async def anthropic_up() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key="sk-ant-test") as upstream:
        yield upstream


def raw_config(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic, database: Path
) -> dict[str, Any]:
    return {
        "server": {"database": str(database)},
        "providers": {
            "local": {"kind": "openai-compatible", "base_url": openai_up.url, "local": True},
            "claude": {"kind": "anthropic", "base_url": anthropic_up.url, "api_key": "sk-ant-test"},
        },
        "models": [
            {"name": "fast", "targets": [{"provider": "local", "model": "ok"}]},
            {
                "name": "cloud",
                "aliases": ["claude-sonnet"],
                "description": "Claude in the cloud",
                "targets": [{"provider": "claude", "model": "ok"}],
            },
        ]
        + [
            {"name": f"other-{i}", "targets": [{"provider": "local", "model": "ok"}]}
            for i in range(3)
        ],
        "routing": {"retries": 0},
    }


def new_key(database: Path, *allowed: str) -> str:
    connection = connect(str(database))
    secret, _ = create_key(connection, "test", "agent-1", allowed_models=tuple(allowed))
    connection.close()
    return secret


def claude(url: str, key: str) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=url, api_key=key, max_retries=0)


# --- count_tokens ------------------------------------------------------------------------------------


def gateway_for(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic, database: Path
) -> AbstractAsyncContextManager[RunningGateway]:
    return running_gateway(from_mapping(raw_config(openai_up, anthropic_up, database), "test", {}))


async def count_tokens(gw: RunningGateway, model: str) -> tuple[int, str | None, Any]:
    """POST /v1/messages/count_tokens for HI, keyless: status, x-turnout-token-count, body."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.url + "/v1/messages/count_tokens", json={"model": model, "messages": HI}
        ) as response,
    ):
        return response.status, response.headers.get("x-turnout-token-count"), await response.json()


async def test_count_tokens_refuses_missing_wrong_and_forbidden_keys(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    fast_only = new_key(database, "fast")
    async with gateway_for(openai_up, anthropic_up, database) as gw:
        async with aiohttp.ClientSession() as session:
            url = gw.url + "/v1/messages/count_tokens"
            body = {"model": "fast", "messages": HI}
            async with session.post(url, json=body) as response:
                assert response.status == 401
                error = await response.json()
                assert error["type"] == "error"
                assert error["error"]["type"] == "authentication_error"
            async with session.post(url, json=body, headers={"x-api-key": "sk-wrong"}) as response:
                assert response.status == 401
        counter = claude(gw.url, fast_only)
        with pytest.raises(anthropic.PermissionDeniedError, match="may not use model 'cloud'"):
            await counter.messages.count_tokens(model="cloud", messages=HI)
        counted = await counter.messages.count_tokens(model="fast", messages=HI)
        assert counted.input_tokens > 0
        await counter.close()


async def test_count_tokens_is_forwarded_to_an_anthropic_target(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    key = new_key(database)
    async with gateway_for(openai_up, anthropic_up, database) as gw:
        client = claude(gw.url, key)
        raw = await client.messages.with_raw_response.count_tokens(
            model="claude-sonnet",
            system="be brief",
            messages=HI,
            tools=[WEATHER],
        )
        counted = await raw.parse()
        message = await client.messages.create(model="cloud", max_tokens=16, messages=HI)
        await client.close()
    assert raw.headers["x-turnout-token-count"] == "upstream"
    assert raw.headers["x-turnout-target"] == "claude/ok"
    # The upstream's own count: the same tokenizer that bills the message.
    assert counted.input_tokens == message.usage.input_tokens
    sent = next(r for r in anthropic_up.requests if r.path == "/v1/messages/count_tokens")
    assert sent.body["model"] == "ok" and sent.body["system"] == "be brief"
    assert sent.body["tools"][0]["name"] == "get_weather"
    assert sent.headers["x-api-key"] == "sk-ant-test"


async def test_count_tokens_without_an_engine_tokenizer_is_a_marked_estimate(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    async with gateway_for(openai_up, anthropic_up, database) as gw:
        assert await count_tokens(gw, "fast") == (200, "estimate", {"input_tokens": 13})
        status, _, body = await count_tokens(gw, "nope")
        assert status == 404
        assert body["error"]["type"] == "not_found_error"
    assert not [r for r in openai_up.requests if r.method == "POST"]


async def test_count_tokens_falls_back_to_the_estimate_when_the_upstream_refuses(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic, tmp_path: Path
) -> None:
    anthropic_up.api_key = "another-key"  # the gateway's key is now refused with 401
    async with gateway_for(openai_up, anthropic_up, tmp_path / "t.db") as gw:
        status, count, body = await count_tokens(gw, "cloud")
        assert (status, count) == (200, "estimate")
        assert body["input_tokens"] > 0


# --- /v1/models ------------------------------------------------------------------------------------


async def test_models_lists_only_what_the_key_may_use(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    fast_only = new_key(database, "fast")
    everything = new_key(database)
    async with gateway_for(openai_up, anthropic_up, database) as gw:
        limited = gw.openai(api_key=fast_only)
        assert [m.id async for m in limited.models.list()] == ["fast"]
        full = gw.openai(api_key=everything)
        ids = [m.id async for m in full.models.list()]
        assert ids == ["fast", "cloud", "claude-sonnet", "other-0", "other-1", "other-2"]
        found = await limited.models.retrieve("fast")
        assert found.id == "fast"
        with pytest.raises(Exception, match="not found"):
            await limited.models.retrieve("cloud")


async def test_models_in_anthropic_shape_for_anthropic_clients(
    openai_up: FakeOpenAI, anthropic_up: FakeAnthropic, tmp_path: Path
) -> None:
    database = tmp_path / "t.db"
    key = new_key(database, "cloud", "fast")
    async with gateway_for(openai_up, anthropic_up, database) as gw:
        client = claude(gw.url, key)
        page = await client.models.list()
        one = await client.models.retrieve("claude-sonnet")
        with pytest.raises(anthropic.NotFoundError, match="model 'other-0' not found"):
            await client.models.retrieve("other-0")  # exists, but this key may not use it
        async with aiohttp.ClientSession() as session:
            async with session.get(
                gw.url + "/v1/models", headers={"x-api-key": key, "anthropic-version": "2023-06-01"}
            ) as response:
                body = await response.json()
        await client.close()
    assert [m.id for m in page.data] == ["fast", "cloud", "claude-sonnet"]
    assert page.data[1].display_name == "Claude in the cloud"
    assert page.data[0].type == "model" and page.data[0].created_at.year == 1970
    assert one.id == "claude-sonnet" and one.display_name == "claude-sonnet (cloud)"
    assert body["has_more"] is False
    assert (body["first_id"], body["last_id"]) == ("fast", "claude-sonnet")
    assert set(body["data"][0]) >= {"type", "id", "display_name", "created_at", "context_window"}


def test_anthropic_models_shape_carries_the_context_window() -> None:
    coder = Model(
        name="coder", targets=(Target(provider="role:coder", model="coder"),), aliases=("c",)
    )
    page = anthropic_list([coder], {"coder": 32768})
    assert page == {
        "data": [
            {
                "type": "model",
                "id": "coder",
                "display_name": "coder",
                "created_at": "1970-01-01T00:00:00Z",
                "lifecycle": "active",
                "max_input_tokens": 32768,
                "context_window": 32768,
            },
            {
                "type": "model",
                "id": "c",
                "display_name": "c (coder)",
                "created_at": "1970-01-01T00:00:00Z",
                "lifecycle": "active",
                "max_input_tokens": 32768,
                "context_window": 32768,
            },
        ],
        "has_more": False,
        "first_id": "coder",
        "last_id": "c",
    }
    assert anthropic_list([], {}) == {
        "data": [],
        "has_more": False,
        "first_id": None,
        "last_id": None,
    }
    assert anthropic_entry("coder", coder, None)["max_input_tokens"] is None


# --- the context error in both envelopes ------------------------------------------------------------


def test_context_exceeded_renders_the_way_clients_recover() -> None:
    error = ContextExceeded(5000, 4096)
    anthropic_error = json.loads(error_body(error, "req-1"))
    assert anthropic_error["error"]["type"] == "invalid_request_error"
    assert anthropic_error["error"]["message"].startswith(
        "prompt is too long: 5000 tokens > 4096 maximum"
    )
    openai_error = json.loads(openai_envelope(error))["error"]
    assert error.status == 400
    assert openai_error["code"] == "context_length_exceeded"
    assert openai_error["type"] == "invalid_request_error"


# --- roles with no model ------------------------------------------------------------------------------


def test_a_role_whose_model_variable_is_unset_is_refused() -> None:
    raw = {"roles": {"fast": {"engine": "llamacpp", "model": "${FAST_MODEL}"}}}
    with pytest.raises(ConfigError, match=r"roles\.fast\.model: expected a model file"):
        from_mapping(raw, "test", {})
    ollama = {"roles": {"o": {"engine": "ollama", "model": "", "base_url": "http://x:11434"}}}
    with pytest.raises(ConfigError, match=r"roles\.o\.model"):
        from_mapping(ollama, "test", {})
    assert from_mapping(raw, "test", {"FAST_MODEL": "/m.gguf"}).roles["fast"].model == "/m.gguf"


def test_check_refuses_a_missing_model_file_when_the_engine_is_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = tmp_path / "llama-server"
    engine.write_text("#!/bin/sh\n")
    engine.chmod(0o755)
    model = tmp_path / "model.gguf"
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "roles:\n  fast:\n    engine: llamacpp\n"
        f"    model: {model}\n"
        f"    command: [{engine}, -m, '${{MODEL}}', --port, '${{PORT}}']\n"
    )
    assert main(["check", str(routing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {routing}: roles.fast.model: file '{model}' does not exist"]
    model.write_bytes(b"GGUF")
    assert main(["check", str(routing)]) == 0
    # No engine here at all (the shipped example on a fresh machine): only a warning.
    routing.write_text(
        "roles:\n  fast:\n    engine: llamacpp\n    model: /nowhere/m.gguf\n"
        "    command: [/nowhere/llama-server, -m, '${MODEL}']\n"
    )
    assert main(["check", str(routing)]) == 0
    assert "cannot start until fixed" in capsys.readouterr().err


async def test_models_publish_an_ollama_roles_loaded_context() -> None:
    async with FakeOllama() as ollama:
        roles = {
            "fast": {
                "engine": "ollama",
                "base_url": ollama.url,
                "model": "llama3.2",
                "context": 1000,
            }
        }
        async with running_gateway(config_of({"roles": roles})) as gw:
            client = gw.openai()
            listed = await client.get("/models", cast_to=dict)
            assert listed["data"][0]["context_window"] == 1000  # not loaded: the configured one
            async with aiohttp.ClientSession() as session:
                async with session.post(gw.url + "/engine/switch/fast?wait=true") as response:
                    assert response.status == 200
            listed = await client.get("/models", cast_to=dict)
            # Loaded: what Ollama says it runs with (the fake's /api/ps context_length).
            assert listed["data"][0]["context_window"] == 4096


def test_llamacpp_context_error_becomes_context_exceeded() -> None:
    body = (
        b'{"error":{"code":400,"message":"request (900 tokens) exceeds the available context '
        b'size (512 tokens), try increasing it","type":"exceed_context_size_error",'
        b'"n_prompt_tokens":900,"n_ctx":512}}'
    )
    mapped = _context_error(UpstreamStatus(400, body))
    assert isinstance(mapped, ContextExceeded)
    assert (mapped.prompt_tokens, mapped.context) == (900, 512)
    other = UpstreamStatus(400, b'{"error":{"type":"invalid_request_error","message":"bad"}}')
    assert _context_error(other) is other
    broken = UpstreamStatus(400, b"exceed_context_size_error, not JSON")
    assert _context_error(broken) is broken
