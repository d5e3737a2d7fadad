"""Responses over a WebSocket on ``/v1/responses``, as Codex speaks it (``supports_websockets``):
``response.create`` frames in, the stream's events out, turns continued by id on the same socket
even with ``store: false``, the usage rows of the HTTP path, and a closed socket cancelling."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from gateway.translate.responses_compact import SUMMARISER_PROMPT
from gateway.translate.responses_compaction import SUMMARY_HEADER
from tests.agent_clients import ensure_clients
from tests.cli_harness import ROOT, cli_env, serve_in_thread
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.scripted_session import ScriptedSession
from tests.gateway_server import RunningGateway, config_of, running_gateway


@pytest.fixture
async def openai_up() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=3) as upstream:
        yield upstream


def gateway(openai_up: FakeOpenAI, claude_up: FakeAnthropic, database: Path) -> Any:
    raw = {
        "providers": {
            "local": {"kind": "openai", "base_url": openai_up.url},
            "claude": {"kind": "anthropic", "base_url": claude_up.url, "api_key": "k"},
        },
        "models": [
            {"name": "chat", "targets": [{"provider": "local", "model": "ok"}]},
            {"name": "slow", "targets": [{"provider": "local", "model": "hang"}]},
            {"name": "claude", "targets": [{"provider": "claude", "model": "c-1"}]},
        ],
        "routing": {"retries": 0},
        "server": {"database": str(database)},
    }
    return running_gateway(config_of(raw))


async def turn(socket: aiohttp.ClientWebSocketResponse, **request: Any) -> list[dict[str, Any]]:
    """Send one response.create; the frames up to the one that ends it."""
    await socket.send_str(json.dumps({"type": "response.create", **request}))
    frames: list[dict[str, Any]] = []
    while True:
        frame = json.loads(await socket.receive_str(timeout=20))
        frames.append(frame)
        if frame["type"] in ("response.completed", "response.failed", "error"):
            return frames


def ws_url(gw: RunningGateway) -> str:
    return gw.url.replace("http://", "ws://") + "/v1/responses"


async def test_codex_style_turns_continue_by_id_on_one_socket_across_providers(
    openai_up: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "turnout.db"
    async with FakeAnthropic() as claude_up, gateway(openai_up, claude_up, database) as gw:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(gw)) as socket:
            first = await turn(socket, model="chat", input="my name is Ada", store=False)
            first_id = first[-1]["response"]["id"]
            await socket.send_str(
                json.dumps({"type": "response.processed", "response_id": first_id})
            )
            second = await turn(
                socket,
                model="claude",
                store=False,
                previous_response_id=first_id,
                input=[{"type": "message", "role": "user", "content": "who am I?"}],
            )
            refused = await turn(socket, model="nope", input="hi")
        # store: false on the socket: nothing in the gateway's own store.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.v1}/responses/{first_id}") as response:
                kept = response.status
    types = [frame["type"] for frame in first]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    assert first[-1]["response"]["output"][0]["content"][0]["text"] == "echo: my name is Ada"
    assert second[-1]["response"]["previous_response_id"] == first_id
    sent = [r.body for r in claude_up.requests if r.method == "POST"][-1]
    assert [(m["role"], m["content"][0]["text"]) for m in sent["messages"]] == [
        ("user", "my name is Ada"),
        ("assistant", "echo: my name is Ada"),
        ("user", "who am I?"),
    ]
    assert refused == [refused[0]] and refused[0]["type"] == "error"
    assert refused[0]["status"] == 404 and refused[0]["error"]["code"] == "model_not_found"
    assert kept == 404
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT ingress, model, status FROM usage ORDER BY id").fetchall()
    assert rows == [
        ("responses", "chat", 200),
        ("responses", "claude", 200),
        ("responses", "-", 404),  # as over HTTP: no model resolved
    ]


async def test_a_warm_up_asks_no_model_and_the_next_turn_continues_from_its_input(
    openai_up: FakeOpenAI, tmp_path: Path
) -> None:
    async with FakeAnthropic() as claude_up, gateway(openai_up, claude_up, tmp_path / "t.db") as gw:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(gw)) as socket:
            warm = await turn(
                socket, model="chat", store=False, generate=False, input="my name is Ada"
            )
            answered = await turn(
                socket,
                model="chat",
                store=False,
                previous_response_id=warm[-1]["response"]["id"],
                input=[{"role": "user", "content": "who am I?"}],
            )
    assert [frame["type"] for frame in warm] == ["response.created", "response.completed"]
    assert warm[-1]["response"]["output"] == []
    posts = [r.body for r in openai_up.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0]["messages"] == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "user", "content": "who am I?"},
    ]
    assert answered[-1]["response"]["output"][0]["content"][0]["text"] == "echo: who am I?"


async def test_closing_the_socket_cancels_the_running_response(
    openai_up: FakeOpenAI, tmp_path: Path
) -> None:
    database = tmp_path / "turnout.db"
    async with FakeAnthropic() as claude_up, gateway(openai_up, claude_up, database) as gw:
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(gw)) as socket:
            await socket.send_str(
                json.dumps({"type": "response.create", "model": "slow", "input": "hi"})
            )
            for _ in range(100):  # until the upstream has the request
                if any(r.method == "POST" for r in openai_up.requests):
                    break
                await asyncio.sleep(0.05)
        for _ in range(100):  # until the gateway has written the cancelled turn's row
            await asyncio.sleep(0.05)
            with sqlite3.connect(database) as conn:
                rows = conn.execute("SELECT ingress, status FROM usage").fetchall()
            if rows:
                break
    assert rows == [("responses", 499)]


# ---------------------------------------------------------------- Codex itself


@pytest.fixture(scope="module")
def clients_bin() -> Path:
    found = ensure_clients(("codex",))
    if found is None:
        pytest.skip("npm is not installed")
    return found


def scripted_config(fake: FakeOpenAI | None) -> dict[str, Any]:
    assert fake is not None
    return {
        "providers": {"up": {"kind": "openai-compatible", "base_url": fake.url, "local": True}},
        "models": [{"name": "coder", "targets": [{"provider": "up", "model": "coder-upstream"}]}],
        "routing": {"retries": 0},
    }


def test_codex_runs_its_tool_loop_over_the_responses_websocket(
    clients_bin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("hello\n")
    env = {k: v for k, v in cli_env(tmp_path).items() if not k.startswith("OPENAI_")}
    env["PATH"] = f"{clients_bin}{os.pathsep}{env.get('PATH', '')}"
    caplog.set_level(logging.INFO, logger="turnout.responses")
    with serve_in_thread(scripted_config, ScriptedSession(str(workdir))) as served:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "launch", "codex", "--url", served.url,
             "--model", "coder", "--",
             "-c", "model_providers.turnout.supports_websockets=true",
             "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
             "edit notes.txt"],
            cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip
        assert served.fake is not None
        upstream_calls = sum(r.path.endswith("/chat/completions") for r in served.fake.requests)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (workdir / "notes.txt").read_text() == "hello, turnout\n"
    closed = [r for r in caplog.records if r.getMessage().startswith("responses websocket closed")]
    assert closed, "Codex did not use the Responses websocket"
    # Codex sends store: false and continues each step of its tool loop by id on the socket.
    created, continued, warm_ups = cast(tuple[int, int, int], closed[0].args)
    assert created >= 2 and continued >= 1 and warm_ups >= 1, closed[0].getMessage()
    # Its warm-ups (generate: false) never reached the model.
    assert upstream_calls == created


def test_codex_auto_compaction_runs_on_the_gateways_summariser(
    clients_bin: Path, tmp_path: Path
) -> None:
    # Codex compacts remotely (a compaction_trigger item in POST /v1/responses) for Azure-named
    # providers; elsewhere it summarises with an ordinary turn, which needs nothing of turnout.
    workdir = tmp_path / "project"
    workdir.mkdir()
    env = {k: v for k, v in cli_env(tmp_path).items() if not k.startswith("OPENAI_")}
    env["PATH"] = f"{clients_bin}{os.pathsep}{env.get('PATH', '')}"
    overrides = ["-c", 'model_providers.turnout.name="azure"',
                 "-c", "model_auto_compact_token_limit=1000"]  # fmt: skip
    with serve_in_thread(scripted_config, FakeOpenAI()) as served:
        assert served.fake is not None

        def codex(*args: str) -> None:
            result = subprocess.run(
                [sys.executable, "-m", "gateway", "launch", "codex", "--url", served.url,
                 "--model", "coder", "--", *overrides, "exec", "--skip-git-repo-check", *args],
                cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                text=True, timeout=120,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr + result.stdout

        codex("my favourite colour is blue")
        # The first turn's usage is over the limit: the next turn compacts first.
        codex("resume", "--last", "what is my favourite colour?")
        sent = [r.body for r in served.fake.requests if r.path.endswith("/chat/completions")]
    summariser = [b for b in sent if b["messages"][0]["content"] == SUMMARISER_PROMPT]
    assert len(summariser) == 1
    assert "my favourite colour is blue" in summariser[0]["messages"][1]["content"]
    last = sent[-1]["messages"]
    assert any(SUMMARY_HEADER in str(m.get("content")) for m in last)
    assert "what is my favourite colour?" in str(last[-1]["content"])
