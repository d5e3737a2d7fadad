"""Prompt layers (seed 002): real files, composed at start-up, seen by a real upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from gateway.app import create_app
from gateway.config import Prompt
from gateway.errors import ConfigError, PromptError
from gateway.prompts import compose, with_system
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import config_of, running_gateway

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": "ping"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
def layers(tmp_path: Path) -> Path:
    """A substrate like seed 002's: one persona and rules, an overlay and a task per surface."""
    for name, text in {
        "persona.md": "You are Eid.\n",
        "rules.md": "Cite your sources.",
        "overlays/study.md": "Speak as a coach.",
        "tasks/ask.md": "Answer the question.",
        "sofia/persona.md": "You are Sofia.",
    }.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def raw_config(fake: FakeOpenAI, prompts: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [
            {"name": "ask", "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "json-digest", "targets": [{"provider": "up", "model": "ok"}]},
        ],
        "routing": {"retries": 0},
        "prompts": prompts,
    }


SUBSTRATE = {
    "persona": {"file": "persona.md", "required": False},
    "rules": "rules.md",
    "overlay": {"file": "overlays/study.md", "required": False},
    "task": "tasks/ask.md",
}


def sent_messages(fake: FakeOpenAI) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [r for r in fake.requests if r.method == "POST"][-1].body[
        "messages"
    ]
    return messages


async def test_layers_lead_the_callers_system_prompt_in_order(
    fake: FakeOpenAI, layers: Path
) -> None:
    prompts = {"layers_dir": str(layers), "routes": {"ask": SUBSTRATE}}
    async with running_gateway(config_of(raw_config(fake, prompts))) as gw:
        client = gw.openai()
        await client.chat.completions.create(
            model="ask", messages=[{"role": "system", "content": "Be brief."}, *USER]
        )
        with_own_system = sent_messages(fake)
        await client.chat.completions.create(model="ask", messages=USER)
        without = sent_messages(fake)
        await client.chat.completions.create(model="json-digest", messages=USER)
        untouched = sent_messages(fake)
    composed = "You are Eid.\n\nCite your sources.\n\nSpeak as a coach.\n\nAnswer the question."
    assert with_own_system == [
        {"role": "system", "content": composed + "\n\nBe brief."},
        *USER,
    ], "one system message: many chat templates accept only one, first"
    assert without == [{"role": "system", "content": composed}, *USER]
    assert untouched == USER, "a route without prompt layers stays persona-free (seed 002)"


async def test_an_agents_prompt_wins_over_its_models(fake: FakeOpenAI, layers: Path) -> None:
    prompts = {
        "layers_dir": str(layers),
        "routes": {"ask": SUBSTRATE},
        "agents": {"agent:sofia": {"persona": "sofia/persona.md", "rules": "rules.md"}},
    }
    async with running_gateway(config_of(raw_config(fake, prompts))) as gw:
        await gw.openai().chat.completions.create(
            model="ask", messages=USER, extra_headers={"X-Agent-Id": "agent:sofia"}
        )
    assert sent_messages(fake)[0] == {
        "role": "system",
        "content": "You are Sofia.\n\nCite your sources.",
    }


async def test_anthropic_clients_get_the_layers_even_on_a_native_anthropic_upstream(
    layers: Path,
) -> None:
    async with FakeAnthropic(api_key="sk-ant-test") as claude_up:
        raw = {
            "providers": {
                "claude": {"kind": "anthropic", "base_url": claude_up.url, "api_key": "sk-ant-test"}
            },
            "models": [{"name": "ask", "targets": [{"provider": "claude", "model": "ok"}]}],
            "prompts": {"layers_dir": str(layers), "routes": {"ask": {"rules": "rules.md"}}},
        }
        async with running_gateway(config_of(raw)) as gw:
            client = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
            message = await client.messages.create(
                model="ask",
                max_tokens=64,
                system="Be brief.",
                messages=CLAUDE_USER,
            )
            await client.close()
        sent = [r for r in claude_up.requests if r.method == "POST"][-1].body
    assert message.content[0].type == "text" and message.content[0].text == "echo: ping"
    system = sent["system"]
    text = system if isinstance(system, str) else "\n\n".join(b["text"] for b in system)
    assert text == "Cite your sources.\n\nBe brief."


# --- start-up: loud or quiet ---------------------------------------------------------------------


def test_a_missing_required_layer_stops_start_up_naming_the_file(
    fake: FakeOpenAI, layers: Path
) -> None:
    prompts = {"layers_dir": str(layers), "routes": {"ask": {**SUBSTRATE, "rules": "rulez.md"}}}
    with pytest.raises(
        PromptError, match=r"prompts\.routes\.ask\.rules: .*rulez\.md does not exist"
    ):
        create_app(config_of(raw_config(fake, prompts)))


def test_missing_optional_layers_are_left_out_quietly(layers: Path) -> None:
    (layers / "persona.md").unlink()
    (layers / "overlays" / "study.md").unlink()
    prompt = msgspec.convert(SUBSTRATE, Prompt)
    assert compose(prompt, layers, 1000, "prompts.routes.ask") == (
        "Cite your sources.\n\nAnswer the question."
    )


def test_an_empty_required_layer_stops_start_up(layers: Path) -> None:
    (layers / "rules.md").write_text("  \n", encoding="utf-8")
    with pytest.raises(PromptError, match=r"required layer file .*rules\.md is empty"):
        compose(msgspec.convert(SUBSTRATE, Prompt), layers, 1000, "prompts.routes.ask")


def test_an_oversized_prompt_stops_start_up_with_each_layers_size(
    fake: FakeOpenAI, layers: Path
) -> None:
    (layers / "tasks" / "ask.md").write_text("x" * 200, encoding="utf-8")
    prompts = {"layers_dir": str(layers), "max_chars": 100, "routes": {"ask": SUBSTRATE}}
    with pytest.raises(PromptError) as caught:
        create_app(config_of(raw_config(fake, prompts)))
    message = str(caught.value)
    assert "prompts.routes.ask: the composed prompt has 253 characters" in message
    assert "over prompts.max_chars (100)" in message
    assert f"task {layers / 'tasks' / 'ask.md'} (200)" in message


def test_layers_for_an_unknown_model_or_an_alias_are_config_errors(fake: FakeOpenAI) -> None:
    raw = raw_config(fake, {"routes": {"nope": {"rules": "rules.md"}}})
    with pytest.raises(ConfigError, match=r"prompts\.routes\.nope: unknown model \(models: ask"):
        config_of(raw)
    raw["models"][0]["aliases"] = ["default"]
    raw["prompts"] = {"routes": {"default": {"rules": "rules.md"}}}
    with pytest.raises(ConfigError, match="an alias of model 'ask'; use the model's name"):
        config_of(raw)


# --- merging into the messages -------------------------------------------------------------------


def test_a_system_message_with_parts_keeps_them_after_the_layers() -> None:
    parts = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "developer", "content": parts, "name": "ops"}, *USER]
    merged = msgspec.json.decode(with_system(msgspec.Raw(msgspec.json.encode(messages)), "Rules."))
    assert merged == [
        {
            "role": "developer",
            "content": [{"type": "text", "text": "Rules."}, *parts],
            "name": "ops",
        },
        *USER,
    ]
