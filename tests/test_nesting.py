"""The nesting check that runs before any JSON decoder (gateway/nesting.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.nesting import MAX_DEPTH, check_depth, depth_exceeds

# Strings full of what a careless scanner would count: brackets, quotes, escapes.
TRICKY = st.text(alphabet='[]{}"\\/bnrtux ', max_size=8)
VALUES = st.recursive(
    st.one_of(st.none(), st.integers(), TRICKY),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(TRICKY, inner, max_size=3)
    ),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, derandomize=True, deadline=None)
@given(VALUES)
def test_the_measured_depth_is_the_real_one_whatever_the_strings_hold(value: Any) -> None:
    body = json.dumps(value).encode()
    real = depth(value)
    # Below MAX_DEPTH brackets the fast path answers; force the exact scan with a small limit.
    for limit in {max(0, real - 1), real}:
        assert depth_exceeds(body, limit) == (real > limit)


def nested(levels: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * levels + b"1" + closer * levels


def test_exactly_max_depth_passes_and_one_more_is_refused() -> None:
    assert check_depth(nested(MAX_DEPTH)) == nested(MAX_DEPTH)
    with pytest.raises(BadRequest, match=f"nests deeper than {MAX_DEPTH} levels") as caught:
        check_depth(nested(MAX_DEPTH + 1, b'{"a":', b"}"))
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000,  # never closed: a decoder still descends 5,000 levels first
        b"[" * 5000 + b"{]",
        b'{"messages": ' + nested(20000) + b"}",
        b'{"a": "\\\\", "b": ' + nested(300) + b"}",  # an escaped backslash before a quote
    ],
)
def test_deep_or_unterminated_bodies_are_refused(body: bytes) -> None:
    assert depth_exceeds(body)


def test_brackets_inside_strings_do_not_count() -> None:
    body = json.dumps(
        {"code": "[[[[{{{{" * 100, "q": '\\"[[[' * 100, "n": "\\n" + "{" * 300}
    ).encode()
    assert not depth_exceeds(body)
    many_shallow = json.dumps({"messages": [{"role": "user", "content": [1]}] * 500}).encode()
    assert not depth_exceeds(many_shallow)
