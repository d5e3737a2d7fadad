"""A streamed round of the agent loop, event by event: what the client gets at once, and what
the loop keeps for itself (pure: no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import UpstreamProtocolError
from gateway.plugins.tools.replies import FunctionCall, ToolCall
from gateway.plugins.tools.rounds import DONE, StreamedRound, closing_events

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def event(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps({**HEAD, "choices": choices, **extra}).encode() + b"\n\n"


def decoded(events: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in events if e != DONE]


def test_text_goes_out_as_it_comes_and_the_role_chunk_waits_for_it() -> None:
    current = StreamedRound()
    role = event({"role": "assistant", "content": None})
    assert current.feed(role) == []
    hello = event({"content": "Hel"})
    assert current.feed(hello) == [role, hello], "the held role chunk goes first, untouched"
    lo = event({"content": "lo"})
    assert current.feed(lo) == [lo]
    assert current.feed(event({}, finish="stop")) == []
    assert current.feed(event(None, usage={"prompt_tokens": 3, "completion_tokens": 2})) == []
    assert current.feed(DONE) == [] and current.done
    assert current.text == "Hello" and current.finish_reason == "stop"
    assert current.usage is not None and current.usage.prompt_tokens == 3


def test_a_round_of_tool_calls_shows_nothing_and_puts_the_calls_together() -> None:
    current = StreamedRound()
    head = {"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": ""}}
    events = [
        event({"role": "assistant", "content": None, "tool_calls": [head]}),
        event({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        event({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        event({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "read_file"}}]}),
        event({}, finish="tool_calls"),
    ]
    assert [current.feed(e) for e in events] == [[]] * len(events)
    assert not current.showing
    assert current.tool_calls() == [
        ToolCall("call_1", FunctionCall("get_weather", '{"city":"Paris"}')),
        ToolCall("call_2", FunctionCall("read_file", "{}")),
    ]
    message = current.message()
    assert message.content is None and message.tool_calls == current.tool_calls()


def test_text_beside_a_tool_call_goes_out_without_the_call() -> None:
    current = StreamedRound()
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}
    [out] = current.feed(event({"content": "Let me look.", "tool_calls": [call]}))
    [chunk] = decoded([out])
    assert chunk["choices"][0]["delta"] == {"content": "Let me look."}
    assert current.tool_calls()[0].function == FunctionCall("f", "{}")


def test_a_later_rounds_text_starts_a_new_paragraph() -> None:
    current = StreamedRound(separate=True)
    [role, first] = decoded(
        [*current.feed(event({"role": "assistant"})), *current.feed(event({"content": "It is"}))]
    )
    assert role["choices"][0]["delta"] == {"role": "assistant"}
    assert first["choices"][0]["delta"]["content"] == "\n\nIt is"
    assert current.feed(event({"content": " 21 C."})) == [event({"content": " 21 C."})]


def test_reasoning_goes_out_too() -> None:
    current = StreamedRound()
    thought = event({"reasoning_content": "hmm"})
    assert current.feed(thought) == [thought]
    assert current.text == ""


def test_an_upstream_error_event_fails_the_round() -> None:
    with pytest.raises(UpstreamProtocolError, match="upstream stream failed"):
        StreamedRound().feed(b'error: {"code":500,"message":"boom"}\n\n')


def test_the_close_carries_the_extension_the_usage_and_only_the_clients_calls() -> None:
    current = StreamedRound()
    current.feed(event({"role": "assistant", "content": None}))
    current.feed(event({}, finish="tool_calls"))
    usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    mine = ToolCall("c1", FunctionCall("read_file", '{"path":"a"}'))
    events = closing_events(current, [mine], usage, {"tool_rounds": 0}, shown=False)
    assert events[-1] == DONE
    calls, finish, totals = decoded(events)
    assert calls["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "index": 0,
                "id": "c1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path":"a"}'},
            }
        ],
    }
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert finish["turnout"] == {"tool_rounds": 0} and finish["id"] == "chatcmpl-1"
    assert totals["choices"] == [] and totals["usage"] == usage


def test_calls_the_loop_does_not_answer_with_end_as_a_stop() -> None:
    current = StreamedRound()
    current.feed(event({"content": "Sunny."}))
    current.feed(event({}, finish="tool_calls"))
    finish, _ = decoded(closing_events(current, [], {}, {}, shown=True))
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
