"""Token estimates without a tokenizer: each guess on real inputs, and the module stays a leaf."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway import tokens


def test_text_counts_four_ascii_characters_a_token_rounded_up() -> None:
    assert tokens.from_text("") == 0
    assert tokens.from_text("a") == 1
    assert tokens.from_text("abcd") == 1
    assert tokens.from_text("abcde") == 2
    assert tokens.from_text("The quick brown fox jumps over the lazy dog.") == 11


def test_text_counts_one_token_per_non_ascii_character() -> None:
    # One token per CJK character, where four characters per token would count 3.
    assert tokens.from_text("今日は良い天気ですね") == 10
    # "hllo" is one token of ASCII, "é" one more; an emoji counts as one character too.
    assert tokens.from_text("héllo") == 2
    assert tokens.from_text("ok 👍") == 2


def _text_by_encoding(text: str) -> int:
    """The estimate as it was first written, for every text: ASCII counted by encoding."""
    if not text:
        return 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    return max(1, -(-ascii_chars // 4) + len(text) - ascii_chars)


@given(st.text(max_size=200))
def test_text_estimate_without_encoding_ascii_agrees_with_counting_by_encoding(text: str) -> None:
    assert tokens.from_text(text) == _text_by_encoding(text)


def test_request_bytes_count_four_bytes_of_json_a_token() -> None:
    assert tokens.from_request_bytes(0) == 0
    assert tokens.from_request_bytes(3) == 0
    assert tokens.from_request_bytes(4000) == 1000
    assert tokens.from_request_bytes(4003) == 1000


def test_admission_estimate_is_the_request_bytes_plus_the_completion_cap() -> None:
    assert tokens.admission_estimate(4000, None) == 1000
    assert tokens.admission_estimate(4000, 0) == 1000
    assert tokens.admission_estimate(4000, 256) == 1256
    # The same ratio as a usage row's prompt estimate: one guess of one thing.
    for body_bytes in (0, 7, 4001, 123_457):
        assert (
            tokens.admission_estimate(body_bytes, 50) == tokens.from_request_bytes(body_bytes) + 50
        )


def test_context_need_counts_three_bytes_a_token_and_ignores_a_negative_cap() -> None:
    assert tokens.context_need(3000, 100) == 1100
    assert tokens.context_need(3002, 0) == 1000
    assert tokens.context_need(0, -1) == 0


def test_context_need_errs_above_the_admission_estimate_for_the_same_bytes() -> None:
    # Routing must not send a conversation to an engine it overflows: the higher guess.
    for prompt_bytes in (12, 3000, 400_000):
        assert tokens.context_need(prompt_bytes, 0) > tokens.admission_estimate(prompt_bytes, 0)


def test_a_stream_without_usage_counts_a_token_per_chunk_after_the_role_chunk() -> None:
    assert tokens.completion_from_stream(0) == 0
    assert tokens.completion_from_stream(1) == 0  # the opening chunk carries only the role
    assert tokens.completion_from_stream(11) == 10


def test_a_whole_answer_without_usage_counts_six_bytes_of_json_a_token() -> None:
    assert tokens.completion_from_body(0) == 0
    assert tokens.completion_from_body(5) == 0
    assert tokens.completion_from_body(600) == 100
    assert tokens.completion_from_body(605) == 100


def test_message_parts_price_characters_images_and_turns_and_never_answer_zero() -> None:
    assert tokens.from_message_parts(0, 0, 0) == 1
    assert tokens.from_message_parts(5, 0, 1) == 2 + 3
    assert tokens.from_message_parts(8000, 1, 2) == 2000 + 1200 + 6
    # Unlike from_text, a non-ASCII character is a quarter token here, like any other.
    assert tokens.from_message_parts(len("今日は良い天気ですね"), 0, 0) == 3


def test_the_module_is_a_leaf_that_imports_nothing_from_the_gateway() -> None:
    tree = ast.parse(Path(tokens.__file__).read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
    assert imported == ["__future__"]
