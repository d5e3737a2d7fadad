"""A real llama-server whose tiny scripted model thinks in ``<think>`` tags, through turnout.

The tiny model's ChatML template has no thinking support, so llama-server leaves the tags in
``content`` whatever ``--reasoning-format`` says: the case ``reasoning: {think_tags: true}`` is
for. The anthropic SDK sees a thinking block, the openai SDK a reasoning item, and a history that
carries the thinking back (as ``reasoning_content``) is accepted by the engine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam, ThinkingConfigEnabledParam

from gateway.translate.reasoning import TURNOUT_SIGNATURE
from gateway.translate.reasoning_seal import text_of, unseal
from tests.engines.engines import LlamaServer, engine_dir
from tests.gateway_server import config_of, running_gateway

pytestmark = pytest.mark.engine

THINK_TEXT = "<think>Plan a greeting.</think>Hi there!"
THINKING: ThinkingConfigEnabledParam = {"type": "enabled", "budget_tokens": 1024}
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def thinker(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """llama-server with a model that always answers THINK_TEXT (built here: about 6 s)."""
    from tests.engines.tiny_gguf import ModelSpec, build_model  # needs gguf + numpy

    vocab = engine_dir() / "vocab" / "ggml-vocab-qwen2.gguf"
    path = tmp_path_factory.mktemp("think") / "tiny-think.gguf"
    build_model(ModelSpec(vocab=vocab, script=THINK_TEXT, name="tiny-think"), path)
    with LlamaServer(path, ["--jinja", "--reasoning-format", "none"], alias="tiny-think") as server:
        yield server


async def test_a_thinking_engine_through_both_sdks_and_back(thinker: LlamaServer) -> None:
    provider = {
        "kind": "llamacpp",
        "base_url": thinker.url + "/v1",
        "reasoning": {"think_tags": True},
    }
    raw = {
        "providers": {"engine": provider},
        "models": [{"name": "local", "targets": [{"provider": "engine", "model": "tiny-think"}]}],
    }
    config = config_of(raw)
    async with running_gateway(config) as gw:
        claude = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
        async with claude.messages.stream(
            model="local", max_tokens=64, thinking=THINKING, messages=HI
        ) as stream:
            final = await stream.get_final_message()
        blocks: list[Any] = list(final.content)
        assert [b.type for b in blocks] == ["thinking", "text"]
        assert blocks[0].thinking == "Plan a greeting." and blocks[0].signature == TURNOUT_SIGNATURE
        assert blocks[1].text == "Hi there!"
        # Claude Code sends the thinking back: llama-server takes it as reasoning_content.
        history: list[Any] = [*HI, {"role": "assistant", "content": final.content}, *HI]
        again = await claude.messages.create(
            model="local", max_tokens=64, thinking=THINKING, messages=history
        )
        assert [b.type for b in again.content] == ["thinking", "text"]
        await claude.close()
        response = await gw.openai().responses.create(model="local", input="hi")
        reasoning: Any = response.output[0]
        assert reasoning.type == "reasoning"
        assert [c.text for c in reasoning.content] == ["Plan a greeting."]
        assert response.output_text == "Hi there!"
    with sqlite3.connect(config.server.database) as db:
        rows = db.execute("SELECT reasoning_tokens, completion_tokens FROM usage").fetchall()
    assert len(rows) == 3 and all(0 < r <= c for r, c in rows)


async def test_codex_stateless_turns_carry_sealed_thinking_back_to_a_real_engine(
    thinker: LlamaServer,
) -> None:
    """Codex's way: store false, include reasoning.encrypted_content, the whole conversation
    sent each turn with the reasoning item as it came (summary and encrypted_content)."""
    provider = {
        "kind": "llamacpp",
        "base_url": thinker.url + "/v1",
        "reasoning": {"think_tags": True},
    }
    raw = {
        "providers": {"engine": provider},
        "models": [{"name": "local", "targets": [{"provider": "engine", "model": "tiny-think"}]}],
    }
    include: Any = ["reasoning.encrypted_content"]
    async with running_gateway(config_of(raw)) as gw:
        client = gw.openai()
        stream = await client.responses.create(
            model="local",
            input="hi",
            store=False,
            include=include,
            reasoning={"summary": "auto"},
            stream=True,
        )
        first: Any = None
        async for event in stream:
            if event.type == "response.completed":
                first = event.response
        reasoning = first.output[0]
        assert reasoning.type == "reasoning" and reasoning.encrypted_content
        history = [item.model_dump(exclude_none=True) for item in first.output]
        again = await client.responses.create(
            model="local",
            input=[
                {"role": "user", "content": "hi"},
                *history,
                {"role": "user", "content": "and?"},
            ],
            store=False,
            include=include,
        )
    assert again.output_text == "Hi there!"
    assert unseal(reasoning.encrypted_content) is not None
    assert text_of(unseal(reasoning.encrypted_content) or []) == "Plan a greeting."
