"""The Response object and its output items, as the whole answer and the stream both build them.

Tool calls go back under the names the client gave its tools (namespace members and custom
tools were flattened into chat functions on the way in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.translate import ChatUsage, IdFactory, new_id
from gateway.translate.reasoning_seal import seal, seal_text


@dataclass(frozen=True, slots=True)
class ToolName:
    """What the client calls a tool that reaches the upstream under a flat chat name."""

    name: str
    namespace: str | None = None
    custom: bool = False


@dataclass(slots=True)
class ResponseTemplate:
    """What every Response object of one request repeats, and the names of the client's tools."""

    model: str
    created_at: int
    # Request fields a Response repeats back, verbatim.
    echo: dict[str, msgspec.Raw]
    tools: dict[str, ToolName]
    ids: IdFactory = new_id
    # Kept by turnout (store: true), and the stored response it continues.
    store: bool = False
    previous_response_id: str | None = None
    # The client asked for a reasoning summary (``reasoning.summary``): thinking goes there.
    reasoning_summary: bool = False
    # The client asked for ``reasoning.encrypted_content`` (``include``): its thinking sealed.
    encrypted_reasoning: bool = False

    def sealed(self, text: Text | None, blocks: list[dict[str, Any]] | None) -> str | None:
        """A reasoning item's ``encrypted_content`` (gateway.translate.reasoning_seal): always
        for Anthropic's signed thinking, which must come back; a local model's when asked."""
        if blocks:
            return seal(blocks)
        if self.encrypted_reasoning and isinstance(text, str) and text:
            return seal_text(text)
        return None

    def response(
        self,
        response_id: str,
        status: str,
        output: list[dict[str, Any]],
        usage: ChatUsage | None = None,
        error: dict[str, Any] | None = None,
        incomplete: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        echo = self.echo
        return {
            "id": response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "metadata": echo.get("metadata") or {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": echo.get("parallel_tool_calls") or True,
            "previous_response_id": self.previous_response_id,
            "reasoning": echo.get("reasoning") or {"effort": None, "summary": None},
            "store": self.store,
            "temperature": echo.get("temperature"),
            "text": echo.get("text") or {"format": {"type": "text"}},
            "tool_choice": echo.get("tool_choice") or "auto",
            "tools": echo.get("tools") or [],
            "top_p": echo.get("top_p"),
            "truncation": "disabled",
            "usage": responses_usage(usage),
            "user": echo.get("user"),
        }

    def call_item(
        self, flat: str, call_id: str, arguments: str, item_id: str, status: str
    ) -> dict[str, Any]:
        """The output item for one chat tool call: a function call or a custom tool call."""
        tool = self.tools.get(flat) or ToolName(flat)
        if tool.custom:
            text = _custom_input(arguments) if status == "completed" else ""
            return {
                "id": item_id,
                "type": "custom_tool_call",
                "status": status,
                "call_id": call_id,
                "name": tool.name,
                "input": text,
            }
        item = {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": call_id,
            "name": tool.name,
        }
        if tool.namespace:
            item["namespace"] = tool.namespace
        return item


def _custom_input(arguments: str) -> str:
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return arguments
    text = value.get("input") if isinstance(value, dict) else None
    return text if isinstance(text, str) else arguments


def responses_usage(usage: ChatUsage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + usage.completion,
    }


def outcome(finish: str | None) -> tuple[str, dict[str, Any] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


# A closed item's text, as its slot in an event (see ``ResponseStream._emit`` in
# ``gateway.translate.responses_stream``).
Text = str | msgspec.Raw


def text_part(text: Text) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, status: str, text: Text | None) -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def reasoning_item(
    item_id: str, text: Text | None, summary: bool = False, encrypted: str | None = None
) -> dict[str, Any]:
    """A reasoning item: the thinking as its content, or as its summary when the client asked
    for one (gateway.translate.responses_stream.ResponseStream); ``encrypted``: its
    ``encrypted_content``."""
    item: dict[str, Any]
    if summary:
        item = {
            "id": item_id,
            "type": "reasoning",
            "summary": [] if text is None else [summary_part(text)],
        }
    else:
        content = [] if text is None else [{"type": "reasoning_text", "text": text}]
        item = {"id": item_id, "type": "reasoning", "summary": [], "content": content}
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    return item


def summary_part(text: Text) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}
