"""OpenAI chat replies as the agent loop reads them, and the answer it writes back.

Read leniently (servers differ on null vs absent, add fields of their own); written in
OpenAI's shape with one extension, ``turnout``: the tool results and, when asked, a trace.
A client that asked for a stream gets the loop's answer as streamed rounds (``rounds.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.errors import UpstreamProtocolError
from gateway.wire import Usage

_encode = msgspec.json.Encoder().encode
_decode_dict = msgspec.json.Decoder(dict[str, Any])


class FunctionCall(msgspec.Struct):
    name: str = ""
    # A JSON string per OpenAI; some servers send the object itself.
    arguments: str | dict[str, Any] | None = None


class ToolCall(msgspec.Struct):
    id: str | None = None
    function: FunctionCall | None = None


class Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: Message | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice] = []
    usage: Usage | None = None


_decode_completion = msgspec.json.Decoder(_Completion)


def read_reply(body: bytes) -> tuple[Message, Usage | None]:
    try:
        completion = _decode_completion.decode(body)
    except msgspec.DecodeError as exc:
        raise UpstreamProtocolError(f"upstream chat reply is not valid: {exc}") from None
    if not completion.choices or completion.choices[0].message is None:
        raise UpstreamProtocolError("upstream chat reply has no message")
    return completion.choices[0].message, completion.usage


@dataclass(slots=True)
class UsageTotal:
    """Tokens of every model call the loop made: the request's usage row counts them all."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0

    def add(self, usage: Usage | None) -> None:
        if usage is not None:
            self.prompt += usage.prompt_tokens
            self.completion += usage.completion_tokens
            self.cached += usage.cached_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        }


def final_body(
    body: bytes,
    usage: UsageTotal,
    extension: dict[str, Any],
    keep_calls: frozenset[str] | None = None,
) -> bytes:
    """The last model reply, answered to the client: total usage, the ``turnout`` extension,
    and tool calls narrowed to ``keep_calls`` (the client's own) or, with an empty set, none."""
    reply = _decode_dict.decode(body)
    choice = reply["choices"][0]
    message = choice.get("message") or {}
    if keep_calls is not None and message.get("tool_calls"):
        kept = [
            c for c in message["tool_calls"] if (c.get("function") or {}).get("name") in keep_calls
        ]
        if kept:
            message["tool_calls"] = kept
        else:
            # The model ignored tool_choice "none": its answer is what text it gave.
            del message["tool_calls"]
            if choice.get("finish_reason") == "tool_calls":
                choice["finish_reason"] = "stop"
    reply["usage"] = usage.as_dict()
    reply["turnout"] = extension
    return _encode(reply)
