"""Request validation: a wrong type or a missing field is a 400 that names the field."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import Operation
from gateway.errors import BadRequest
from gateway.wire import decode_request, usage_of


def test_chat_request_keeps_unknown_fields_raw() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"logprobs":true,"vendor_x":{"a":[1,2]}}'
    request = decode_request(Operation.CHAT, body)
    assert request.model == "m" and not request.stream and not request.include_usage
    assert bytes(request.fields["vendor_x"]) == b'{"a":[1,2]}'
    assert bytes(request.fields["logprobs"]) == b"true"


def test_stream_and_include_usage_are_read() -> None:
    body = b'{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}'
    request = decode_request(Operation.CHAT, body)
    assert request.stream and request.include_usage


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        (b'{"model":1,"messages":[]}', "model", "Expected `str`, got `int`"),
        (b'{"messages":[]}', "model", "missing required field 'model'"),
        (b'{"model":"m"}', "messages", "missing required field 'messages'"),
        (
            b'{"model":"m","messages":[{"content":"x"}]}',
            "messages[0].role",
            "missing required field 'messages[0].role'",
        ),
        (b'{"model":"m","messages":"hi"}', "messages", "Expected `array`, got `str`"),
        (
            b'{"model":"m","messages":[],"temperature":"hot"}',
            "temperature",
            "Expected `float | null`, got `str`",
        ),
        (b'{"model":"m","messages":[],"stream":"yes"}', "stream", "Expected `bool"),
        (b'{"model":"m","messages":[],"max_tokens":1.5}', "max_tokens", "Expected `int"),
    ],
)
def test_wrong_fields_name_the_param(body: bytes, param: str, text: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_request(Operation.CHAT, body)
    assert caught.value.param == param
    assert text in caught.value.message
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "body", [b"", b"{", b"not json", b"[1,2]", b"null", b'{"model":"m","messages":[]} trailing']
)
def test_malformed_bodies_are_400(body: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_request(Operation.CHAT, body)


def test_embeddings_and_completions_validate_their_own_fields() -> None:
    assert decode_request(Operation.EMBEDDINGS, b'{"model":"e","input":["a","b"]}').model == "e"
    with pytest.raises(BadRequest, match="input"):
        decode_request(Operation.EMBEDDINGS, b'{"model":"e"}')
    assert decode_request(
        Operation.COMPLETIONS, b'{"model":"c","prompt":[1,2,3],"stream":true}'
    ).stream
    with pytest.raises(BadRequest, match="prompt"):
        decode_request(Operation.COMPLETIONS, b'{"model":"c","prompt":5}')


def test_usage_is_read_without_the_rest() -> None:
    usage = usage_of(
        b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    )
    assert usage is not None and usage.prompt_tokens == 3 and usage.completion_tokens == 4
    assert usage_of(b'{"usage":null}') is None
    assert usage_of(b"garbage") is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_bad_request(body: bytes) -> None:
    try:
        decode_request(Operation.CHAT, body)
    except BadRequest:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["model", "messages", "stream", "tools", "stop", "n", "x"]), json_values
    )
)
def test_arbitrary_json_objects_never_raise_anything_but_bad_request(
    obj: dict[str, object],
) -> None:
    try:
        decode_request(Operation.CHAT, msgspec.json.encode(obj))
    except BadRequest:
        pass
