"""Reasoning rules shared by the translators, and request fields mapped or ignored: pure."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.translate import ChatUsage, CompletionDetails, raw
from gateway.translate.reasoning import (
    OMITTED,
    TURNOUT_SIGNATURE,
    anthropic_signed,
    attach,
    without_unsigned_thinking,
)
from gateway.translate.request_fields import (
    affinity_key,
    responses_extras,
    wants_reasoning_summary,
)


def fields(**values: Any) -> dict[str, msgspec.Raw]:
    return {k: raw(v) for k, v in values.items()}


def test_only_anthropic_made_signatures_count_as_signed() -> None:
    assert anthropic_signed("EqQBCkYIBxgCKkDsig")
    assert not anthropic_signed(TURNOUT_SIGNATURE)
    assert not anthropic_signed("") and not anthropic_signed(None)


def test_removing_unsigned_thinking_never_leaves_a_turn_empty() -> None:
    signed = {"type": "thinking", "thinking": "a", "signature": "EqQ"}
    turn = {
        "role": "assistant",
        "content": [signed, {"type": "thinking", "thinking": "b", "signature": TURNOUT_SIGNATURE}],
    }
    kept = msgspec.json.decode(without_unsigned_thinking(raw(turn)))
    assert kept["content"] == [signed]
    alone = {"role": "assistant", "content": [{"type": "thinking", "thinking": "b"}]}
    emptied = msgspec.json.decode(without_unsigned_thinking(raw(alone)))
    assert emptied["content"] == [{"type": "text", "text": OMITTED}]


def test_thinking_joins_the_answer_after_it_and_is_dropped_when_a_user_spoke_first() -> None:
    messages: list[dict[str, Any]] = [{"role": "assistant", "content": "x"}]
    thoughts = ["one", "", "two"]
    attach(messages, thoughts, added=True)
    assert messages[-1]["reasoning_content"] == "one\n\ntwo" and thoughts == []
    messages.append({"role": "user", "content": "y"})
    thoughts.append("lost")
    attach(messages, thoughts, added=True)
    assert "reasoning_content" not in messages[-1] and thoughts == []


def test_responses_extras_pass_map_and_ignore() -> None:
    chat: dict[str, msgspec.Raw] = {}
    ignored = responses_extras(
        fields(
            prompt_cache_key="k",
            user="u",
            reasoning={"effort": "high", "summary": "auto"},
            text={"verbosity": "low"},
            service_tier="priority",
            truncation="auto",
            max_tool_calls=3,
            metadata={"a": "b"},
        ),
        chat,
    )
    assert {k: msgspec.json.decode(v) for k, v in chat.items()} == {
        "prompt_cache_key": "k",
        "user": "u",
        "reasoning_effort": "high",
        "verbosity": "low",
    }
    assert ignored == "service_tier,truncation,max_tool_calls"
    defaults = responses_extras(fields(service_tier="auto", truncation="disabled"), {})
    assert defaults == ""


def test_a_summary_request_and_an_affinity_key_are_read_from_the_raw_fields() -> None:
    assert wants_reasoning_summary(fields(reasoning={"summary": "detailed"}))
    assert not wants_reasoning_summary(fields(reasoning={"effort": "low"}))
    assert affinity_key(fields(prompt_cache_key="conv")) == "conv"
    assert affinity_key(fields(prompt_cache_key=None)) == ""


def test_reasoning_tokens_are_estimated_only_when_the_upstream_reports_none() -> None:
    silent = ChatUsage(prompt_tokens=3, completion_tokens=10)
    silent.count_reasoning(20)
    assert silent.reasoning == 5 and silent.wire().reasoning_tokens == 5
    capped = ChatUsage(prompt_tokens=3, completion_tokens=2)
    assert capped.wire(400).reasoning_tokens == 2
    reported = ChatUsage(completion_tokens=10, completion_tokens_details=CompletionDetails(7))
    reported.count_reasoning(400)
    assert reported.wire(400).reasoning_tokens == 7
