"""``<think>`` blocks split out of content (adapters/think_tags.py): pure, every split point."""

from __future__ import annotations

import itertools
import json

import msgspec
import pytest

from adapters.think_tags import ThinkSplitter, ThinkStream, split_reply

ANSWER = "<think>First, 2+2.\nThen check.</think>\n\nThe answer is 4 (<b>bold</b> < 5)."


def split_in_pieces(text: str, cuts: list[int]) -> tuple[str, str, list[str]]:
    splitter = ThinkSplitter()
    thought, content, emitted = [], [], []
    bounds = [0, *cuts, len(text)]
    for start, end in itertools.pairwise(bounds):
        t, c = splitter.feed(text[start:end])
        thought.append(t)
        content.append(c)
        emitted.append(c)
    t, c = splitter.flush()
    return "".join(thought) + t, "".join(content) + c, emitted


@pytest.mark.parametrize("cut", range(1, len(ANSWER)))
def test_a_tag_split_at_any_point_between_two_chunks_still_splits(cut: int) -> None:
    thought, content, _ = split_in_pieces(ANSWER, [cut])
    assert thought == "First, 2+2.\nThen check."
    assert content == "The answer is 4 (<b>bold</b> < 5)."


def test_one_character_chunks_split_the_same_way() -> None:
    thought, content, _ = split_in_pieces(ANSWER, list(range(1, len(ANSWER))))
    assert (thought, content) == ("First, 2+2.\nThen check.", "The answer is 4 (<b>bold</b> < 5).")


def test_only_a_possible_tag_start_is_held_back() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("plain text <th") == ("", "plain text ")
    assert splitter.feed("ings> more") == ("", "<things> more")
    assert splitter.feed("a < b") == ("", "a < b")  # "<" followed by a space cannot open a tag
    assert splitter.feed("x<") == ("", "x")
    assert splitter.flush() == ("", "<")


def test_text_without_tags_passes_whole() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("hello") == ("", "hello")
    assert splitter.reasoning_chars == 0


def test_an_unclosed_think_block_is_all_reasoning() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>still going</thi") == ("still going", "")
    assert splitter.flush() == ("</thi", "")
    assert splitter.reasoning_chars == len("still going</thi")


def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode()


def test_a_stream_moves_think_text_to_reasoning_content_and_flushes_at_finish() -> None:
    fix = ThinkStream()
    pieces = ["<thi", "nk>ab", "c</think>Hi", " there <"]
    deltas = [json.loads(fix(chunk({"content": p}))[6:])["choices"][0]["delta"] for p in pieces]  # type: ignore[index]
    finish = fix(chunk({}, "stop"))
    assert finish is not None
    last = json.loads(finish[6:])["choices"][0]["delta"]
    assert [d.get("reasoning_content") for d in deltas] == [None, "ab", "c", None]
    assert [d["content"] for d in deltas] == [None, None, "Hi", " there "]
    assert last["content"] == "<"
    usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    counted = fix(b"data: " + json.dumps({"choices": [], "usage": usage}).encode())
    assert counted is not None
    assert json.loads(counted[6:])["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1}
    assert fix(b"data: [DONE]") == b"data: [DONE]"


def test_events_without_content_pass_byte_for_byte() -> None:
    fix = ThinkStream()
    event = chunk({"role": "assistant"})
    assert fix(event) is event


def test_a_whole_reply_is_split() -> None:
    reply = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    }
    fixed = msgspec.json.decode(split_reply(json.dumps(reply).encode()))
    message = fixed["choices"][0]["message"]
    assert message["reasoning_content"] == "First, 2+2.\nThen check."
    assert message["content"] == "The answer is 4 (<b>bold</b> < 5)."
    plain = json.dumps({"choices": [{"message": {"content": "no tags"}}]}).encode()
    assert split_reply(plain) is plain
