"""Prompt prefixes stay byte-stable from turn to turn (gateway/translate/prefix.py).

Pure tests: Claude Code's billing line is removed where a local engine would see it, and a
conversation translated from Anthropic Messages or OpenAI Responses grows only at its end,
so the engine's prefix cache covers every earlier turn. End-to-end tests check, through a
real gateway, what the upstreams actually receive.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.builtin import default_registry
from gateway.app import create_app
from gateway.config import Provider
from gateway.errors import ConfigError
from gateway.translate import Translated, raw
from gateway.translate import anthropic as messages_api
from gateway.translate import responses as responses_api
from gateway.translate.prefix import request_shapers, strip_billing_line, strip_volatile_prefix
from tests.engines.engines import HELLO_TEXT, LlamaServer
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import config_of, running_gateway

CLAUDE_SYSTEM = "You are Claude Code, Anthropic's official CLI for Claude."
HI: MessageParam = {"role": "user", "content": "hi"}


def billing(cch: str) -> str:
    """Claude Code's first system block, as captured in anthropics/claude-code#68900."""
    return f"x-anthropic-billing-header: cc_version=2.1.177.01c; cc_entrypoint=cli; cch={cch};"


def chat_fields(messages: list[dict[str, Any]]) -> dict[str, msgspec.Raw]:
    return {"model": raw("m"), "messages": raw(messages)}


def messages_of(fields: dict[str, msgspec.Raw]) -> Any:
    return msgspec.json.decode(fields["messages"])


# --- the billing line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (billing("36ee5") + "\n\n" + CLAUDE_SYSTEM, CLAUDE_SYSTEM),
        (billing("0aaa9") + "\n" + CLAUDE_SYSTEM, CLAUDE_SYSTEM),
        (billing("0aaa9"), ""),
        # Older and future shapes: other pairs, no final semicolon, text after the pairs.
        ("x-anthropic-billing-header: cc_version=2.1.x; cch=abcd1234", ""),
        ("x-anthropic-billing-header: cch=abc; Keep me.\nRest", "Keep me.\nRest"),
        # Prompt layers put their text before it, within the same system message.
        (
            "Persona.\n\n" + billing("1c8b4") + "\n\n" + CLAUDE_SYSTEM,
            "Persona.\n\n" + CLAUDE_SYSTEM,
        ),
        (CLAUDE_SYSTEM, CLAUDE_SYSTEM),
        # Mentioned inside a line, it is someone's text, not the header.
        ("see x-anthropic-billing-header: cch=1;", "see x-anthropic-billing-header: cch=1;"),
    ],
)
def test_billing_line_is_removed_from_text(text: str, kept: str) -> None:
    assert strip_billing_line(text) == kept


def test_two_turns_with_different_cch_reach_the_engine_identical() -> None:
    turns = [
        chat_fields([{"role": "system", "content": billing(c) + "\n\n" + CLAUDE_SYSTEM}])
        for c in ("36ee5", "0aaa9")
    ]
    shaped = [strip_volatile_prefix(t) for t in turns]
    assert shaped[0]["messages"] == shaped[1]["messages"]
    assert messages_of(shaped[0]) == [{"role": "system", "content": CLAUDE_SYSTEM}]


def test_billing_part_of_a_content_list_is_dropped_and_a_message_left_empty_goes() -> None:
    parts = [{"type": "text", "text": billing("a")}, {"type": "text", "text": CLAUDE_SYSTEM}]
    fields = chat_fields([{"role": "system", "content": parts}, {"role": "user", "content": "hi"}])
    assert messages_of(strip_volatile_prefix(fields))[0]["content"] == [parts[1]]
    alone = chat_fields(
        [{"role": "system", "content": billing("a")}, {"role": "user", "content": "hi"}]
    )
    assert messages_of(strip_volatile_prefix(alone)) == [{"role": "user", "content": "hi"}]


def test_messages_keyed_in_another_order_are_stripped_too() -> None:
    fields = chat_fields(
        [
            {"content": billing("a") + "\n" + CLAUDE_SYSTEM, "role": "system"},
            {"content": "hi", "role": "user"},
            {"content": "ok", "role": "assistant"},
        ]
    )
    assert messages_of(strip_volatile_prefix(fields)) == [
        {"content": CLAUDE_SYSTEM, "role": "system"},
        {"content": "hi", "role": "user"},
        {"content": "ok", "role": "assistant"},
    ]


def test_a_long_prompt_layer_before_the_line_still_lets_a_translation_strip_it() -> None:
    layer = "Team rules. " * 200  # what gateway/prompts.py puts first, past the first bytes
    body = msgspec.json.encode(
        {
            "model": "m",
            "max_tokens": 8,
            "system": [{"type": "text", "text": billing("x")}, {"type": "text", "text": "S"}],
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    fields = messages_api.prepare(body, {}).request.fields
    system = messages_of(fields)[0]["content"]
    fields["messages"] = raw([{"role": "system", "content": layer + "\n\n" + system}, HI])
    assert messages_of(strip_volatile_prefix(fields))[0]["content"] == layer + "\n\nS"


def test_requests_without_the_line_come_back_as_the_same_object() -> None:
    quoted = chat_fields(
        [
            {"role": "system", "content": CLAUDE_SYSTEM},
            {"role": "user", "content": billing("abcde")},  # the user's own text
        ]
    )
    for fields in (chat_fields([{"role": "user", "content": "hi"}]), quoted, {"input": raw("x")}):
        assert strip_volatile_prefix(fields) is fields


def test_a_translated_request_keeps_its_native_original() -> None:
    body = msgspec.json.encode(
        {
            "model": "m",
            "max_tokens": 8,
            "system": [{"type": "text", "text": billing("x")}, {"type": "text", "text": "S"}],
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    request = messages_api.prepare(body, {}).request
    shaped = strip_volatile_prefix(request.fields)
    assert isinstance(shaped, Translated) and isinstance(request.fields, Translated)
    # The original travels beside the fields, untouched by shaping.
    assert request.native is not None
    assert messages_of(shaped)[0] == {"role": "system", "content": "S"}


# --- which providers strip it --------------------------------------------------------------------


def test_stripping_is_on_for_local_providers_off_for_cloud_and_never_for_anthropic() -> None:
    providers = {
        "engine": Provider(kind="llamacpp", base_url="http://127.0.0.1:8081/v1"),
        "cloud": Provider(kind="openai", base_url="https://api.openai.com/v1"),
        "cloud-on": Provider(
            kind="openai-compatible", base_url="https://x.example/v1", strip_volatile_prefix=True
        ),
        "engine-off": Provider(
            kind="llamacpp", base_url="http://127.0.0.1:1/v1", strip_volatile_prefix=False
        ),
        "claude-local": Provider(kind="anthropic", base_url="http://127.0.0.1:2", local=True),
    }
    registry = default_registry()
    assert sorted(request_shapers(providers, registry.keeps_client_prefix)) == [
        "cloud-on",
        "engine",
    ]


def test_asking_to_strip_for_the_anthropic_kind_is_a_config_error_naming_the_key() -> None:
    raw_config = {
        "providers": {
            "claude": {
                "kind": "anthropic",
                "base_url": "https://api.anthropic.com",
                "strip_volatile_prefix": True,
            }
        },
        "models": [{"name": "m", "targets": [{"provider": "claude", "model": "x"}]}],
    }
    with pytest.raises(ConfigError, match=r"providers\.claude\.strip_volatile_prefix"):
        create_app(config_of(raw_config))


# --- turn k+1 starts with turn k ----------------------------------------------------------------

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
TOOL_NAMES = ("read", "edit", "bash")


def anthropic_turn(role: str, draw: Any, call_ids: list[str]) -> dict[str, Any]:
    """One Messages turn: text blocks, and tool calls (assistant) or their results (user)."""
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": t} for t in draw(st.lists(texts, max_size=2))
    ]
    if role == "assistant":
        for name in draw(st.lists(st.sampled_from(TOOL_NAMES), max_size=2)):
            call_ids.append(f"toolu_{len(call_ids)}")
            arguments = draw(st.dictionaries(st.sampled_from("abc"), texts, max_size=2))
            blocks.append(
                {"type": "tool_use", "id": call_ids[-1], "name": name, "input": arguments}
            )
    elif call_ids and draw(st.booleans()):
        result = {"type": "tool_result", "tool_use_id": call_ids[-1], "content": draw(texts)}
        blocks.insert(0, result)
    if not blocks or draw(st.booleans()):
        return {"role": role, "content": draw(texts) or "."}
    return {"role": role, "content": blocks}


@st.composite
def anthropic_sessions(draw: Any) -> tuple[list[dict[str, Any]], list[bytes]]:
    """A Claude Code session: the conversation, and one request body per turn."""
    tools = [
        {
            "name": n,
            "description": draw(texts),
            "input_schema": {"type": "object", "properties": {}},
        }
        for n in draw(st.lists(st.sampled_from(TOOL_NAMES), unique=True, max_size=3))
    ]
    system_texts = draw(st.lists(texts, min_size=1, max_size=3))
    call_ids: list[str] = []
    turns = [anthropic_turn("user", draw, call_ids)]
    bodies = []
    for k in range(draw(st.integers(min_value=2, max_value=4))):
        if k:
            turns.append(anthropic_turn("assistant", draw, call_ids))
            turns.append(anthropic_turn("user", draw, call_ids))
        # Every request carries a fresh billing line, like Claude Code's.
        system = [{"type": "text", "text": billing(f"{k:05x}")}]
        system += [{"type": "text", "text": t} for t in system_texts]
        sent = [dict(t) for t in turns]
        last = sent[-1]["content"]
        if isinstance(last, list):
            # Claude Code moves its cache breakpoint to the newest message every turn.
            sent[-1]["content"] = [*last[:-1], {**last[-1], "cache_control": {"type": "ephemeral"}}]
        body = {"model": "claude-x", "max_tokens": 99, "system": system, "messages": sent}
        if tools:
            body["tools"] = tools
        bodies.append(msgspec.json.encode(body))
    return turns, bodies


def assert_prefix_holds(upstream: list[dict[str, msgspec.Raw]]) -> None:
    """Each turn's messages, encoded, start with the whole of the previous turn's; tools match."""
    for before, after in itertools.pairwise(upstream):
        previous, current = bytes(before["messages"]), bytes(after["messages"])
        # (Turns with nothing a chat upstream can use, such as empty text, add nothing.)
        grown = previous in (b"[]", current) or current.startswith(previous[:-1] + b",")
        assert grown, (previous, current)
        assert before.get("tools") == after.get("tools")
        assert before.get("tool_choice") == after.get("tool_choice")


def shaped_for_engine(fields: dict[str, msgspec.Raw]) -> dict[str, msgspec.Raw]:
    engine = {"engine": Provider(kind="llamacpp", base_url="http://127.0.0.1:8081/v1")}
    return request_shapers(engine, default_registry().keeps_client_prefix)["engine"](fields)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_sessions())
def test_messages_turn_k_plus_one_starts_with_turn_k_for_a_local_engine(
    session: tuple[list[dict[str, Any]], list[bytes]],
) -> None:
    _, bodies = session
    translated = [messages_api.prepare(b, {}).request.fields for b in bodies]
    assert_prefix_holds([shaped_for_engine(f) for f in translated])
    # Without the shaping, the billing line alone breaks the cache at the first token.
    first = [bytes(f["messages"]) for f in translated]
    assert first[0][:200] != first[1][:200]


@st.composite
def responses_sessions(draw: Any) -> list[bytes]:
    """A Codex session: developer instructions, tools, then growing input items."""
    tools = [
        {
            "type": "function",
            "name": n,
            "description": draw(texts),
            "parameters": {"type": "object"},
        }
        for n in draw(st.lists(st.sampled_from(TOOL_NAMES), unique=True, max_size=3))
    ]
    items: list[dict[str, Any]] = [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": draw(texts)}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": draw(texts) or "."}],
        },
    ]
    bodies = []
    for k in range(draw(st.integers(min_value=2, max_value=4))):
        if k:
            reply = draw(texts)
            if reply:
                items.append(
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": reply}],
                    }
                )
            if tools and draw(st.booleans()):
                call = f"call_{k}"
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call,
                        "name": tools[0]["name"],
                        "arguments": "{}",
                    }
                )
                items.append(
                    {"type": "function_call_output", "call_id": call, "output": draw(texts)}
                )
            items.append(
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": draw(texts) or "."}],
                }
            )
        body: dict[str, Any] = {
            "model": "codex",
            "instructions": "You are Codex.",
            "input": list(items),
            "stream": True,
            "store": False,
        }
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        bodies.append(msgspec.json.encode(body))
    return bodies


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses_sessions())
def test_responses_turn_k_plus_one_starts_with_turn_k(bodies: list[bytes]) -> None:
    translated = [responses_api.prepare(b, 0).request.fields for b in bodies]
    assert_prefix_holds([shaped_for_engine(f) for f in translated])


# --- through a real gateway ----------------------------------------------------------------------


async def test_local_engine_gets_a_stable_system_prompt_and_anthropic_the_original() -> None:
    async with (
        FakeOpenAI(flavor="llamacpp") as engine,
        FakeOpenAI(flavor="llamacpp") as kept,
        FakeAnthropic(api_key="sk-ant-test") as claude,
    ):
        config = config_of(
            {
                "providers": {
                    "engine": {"kind": "llamacpp", "base_url": engine.url},
                    "kept": {
                        "kind": "llamacpp",
                        "base_url": kept.url,
                        "strip_volatile_prefix": False,
                    },
                    "claude": {
                        "kind": "anthropic",
                        "base_url": claude.url,
                        "api_key": "sk-ant-test",
                    },
                },
                "models": [
                    {"name": "local", "targets": [{"provider": "engine", "model": "ok"}]},
                    {"name": "kept", "targets": [{"provider": "kept", "model": "ok"}]},
                    {"name": "cloud", "targets": [{"provider": "claude", "model": "ok"}]},
                ],
            }
        )
        async with running_gateway(config) as gw:
            client = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
            for model in ("local", "kept", "cloud"):
                for cch, stream in (("36ee5", False), ("0aaa9", True)):
                    request: dict[str, Any] = {
                        "model": model,
                        "max_tokens": 16,
                        "system": [
                            {"type": "text", "text": billing(cch)},
                            {"type": "text", "text": CLAUDE_SYSTEM},
                        ],
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                    if stream:
                        async with client.messages.stream(**request) as events:
                            await events.get_final_message()
                    else:
                        await client.messages.create(**request)
            await client.close()
    sent = [r.body for r in engine.requests if r.method == "POST"]
    assert [b["messages"][0] for b in sent] == [{"role": "system", "content": CLAUDE_SYSTEM}] * 2
    kept_system = [r.body["messages"][0]["content"] for r in kept.requests if r.method == "POST"]
    assert [
        s.startswith(billing(c)) for s, c in zip(kept_system, ("36ee5", "0aaa9"), strict=True)
    ] == [True, True]
    anthropic_system = [r.body["system"][0]["text"] for r in claude.requests if r.method == "POST"]
    assert anthropic_system == [billing("36ee5"), billing("0aaa9")]


@pytest.mark.engine
async def test_claude_code_turns_hit_llama_servers_prefix_cache_only_when_stripped(
    llama_hello: LlamaServer,
) -> None:
    """Two Claude Code turns (new cch each) against a real llama-server, with and without."""
    engine = llama_hello.url + "/v1"
    config = config_of(
        {
            "providers": {
                "engine": {"kind": "llamacpp", "base_url": engine},
                "kept": {"kind": "llamacpp", "base_url": engine, "strip_volatile_prefix": False},
            },
            "models": [
                {"name": "local", "targets": [{"provider": "engine", "model": "x"}]},
                {"name": "kept", "targets": [{"provider": "kept", "model": "x"}]},
            ],
        }
    )
    cached: dict[str, list[tuple[int, int]]] = {}
    async with running_gateway(config) as gw:
        client = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
        for model in ("kept", "local"):
            rules = " ".join(f"{model} rule {i}: keep answers short." for i in range(30))
            turns: list[MessageParam] = [{"role": "user", "content": "hi"}]
            for cch in ("36ee5", "0aaa9"):
                message = await client.messages.create(
                    model=model,
                    max_tokens=16,
                    system=[
                        {"type": "text", "text": billing(cch)},
                        {"type": "text", "text": CLAUDE_SYSTEM + " " + rules},
                    ],
                    messages=turns,
                )
                usage = message.usage
                prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0)
                cached.setdefault(model, []).append((prompt, usage.cache_read_input_tokens or 0))
                turns = [*turns, {"role": "assistant", "content": HELLO_TEXT}, HI]
        await client.close()
    (first, _), (_, hit) = cached["local"]
    # The whole first turn is reused (llama-server re-reads at least its last token).
    assert hit >= first - 2, cached
    (first, _), (_, miss) = cached["kept"]
    assert miss < first // 4, cached
