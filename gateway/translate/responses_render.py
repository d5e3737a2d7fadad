"""A whole (non-streamed) OpenAI chat answer as one Response object."""

from __future__ import annotations

from typing import Any

from gateway.translate import ChatMessage, decode_chat, encode
from gateway.translate.responses_items import (
    ResponseTemplate,
    message_item,
    outcome,
    reasoning_item,
)
from gateway.wire import Usage


def render_response(body: bytes, template: ResponseTemplate) -> tuple[bytes, Usage | None]:
    """An OpenAI chat completion as a Response object."""
    chat = decode_chat(body)
    choice = chat.first()
    message = (choice.message if choice else None) or ChatMessage()
    ids = template.ids
    response_id = ids("resp_")
    output: list[dict[str, Any]] = []
    blocks = message.thinking_blocks
    if message.thought or blocks:
        sealed = template.sealed(message.thought, blocks)
        summary = template.reasoning_summary
        output.append(reasoning_item(ids("rs_"), message.thought, summary, sealed))
    text = message.content or message.refusal
    if text:
        output.append(message_item(ids("msg_"), "completed", text))
    for call in message.tool_calls or ():
        function = call.function
        name = (function.name if function else None) or ""
        arguments = (function.arguments if function else None) or ""
        call_id = call.id or ids("call_")
        output.append(template.call_item(name, call_id, arguments, ids("fc_"), "completed"))
    status, incomplete = outcome(choice.finish_reason if choice else None)
    if chat.usage is not None:
        chat.usage.count_reasoning(len(message.thought or ""))
    response = template.response(response_id, status, output, chat.usage, incomplete=incomplete)
    usage = chat.usage.wire(len(message.thought or "")) if chat.usage else None
    return encode(response), usage
