"""The agent-session benchmark's pure parts on the committed recordings (bench/sessions/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import agent_session as bench

SESSIONS = sorted((Path(__file__).resolve().parent.parent / "bench" / "sessions").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return bench.load_session(path)


@pytest.mark.parametrize("path", SESSIONS, ids=lambda p: p.stem)
def test_recorded_session_is_a_growing_tool_loop_without_machine_paths(path: Path) -> None:
    session = load(path)
    assert session["ingress"] in bench.PROTOCOLS
    turns = session["turns"]
    assert len(turns) >= 3
    text = path.read_text()
    assert "/tmp/turnout-session-" not in text and "/work/project" in text
    sizes = [len(json.dumps(t)) for t in turns]
    assert sizes == sorted(sizes)  # each turn carries the previous ones


@pytest.mark.parametrize("path", SESSIONS, ids=lambda p: p.stem)
def test_every_recorded_turn_translates_to_a_chat_request_for_the_engine(path: Path) -> None:
    session = load(path)
    previous: list[Any] = []
    for body in session["turns"]:
        chat = bench.direct_chat(body, session["ingress"], 8)
        assert chat["model"] == "a" and chat["stream"] is True
        assert chat["messages"][0]["role"] == "system"
        # the conversation so far is a prefix of the next turn's: what lets the cache hit
        assert chat["messages"][: len(previous)] == previous
        previous = chat["messages"]


def test_usage_readers_take_each_protocols_cached_tokens() -> None:
    anthropic = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 100}}},
        {"type": "message_delta", "usage": {"input_tokens": 10, "cache_read_input_tokens": 90}},
    ]
    assert bench.anthropic_usage(anthropic) == (100, 90)
    responses = [
        {
            "type": "response.completed",
            "response": {
                "usage": {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 40}}
            },
        }
    ]
    assert bench.responses_usage(responses) == (50, 40)
    # A reply cut at max_output_tokens (the benchmark caps replies) ends incomplete.
    responses[0]["type"] = "response.incomplete"
    assert bench.responses_usage(responses) == (50, 40)
    chat = [{"choices": [], "timings": {"prompt_n": 3, "cache_n": 97}}]
    assert bench.chat_usage(chat) == (100, 97)
