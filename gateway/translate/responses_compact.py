"""``POST /v1/responses/compact``: a long conversation summarised by a chat model.

The answer is what OpenAI's is (``object: "response.compaction"``): every user message of the
conversation, then one ``compaction`` item carrying the summary of everything else
(gateway/translate/responses_compaction.py). A client sends those items back as the input of
its next request in place of the history they replace.

The summariser sees the conversation as one plain transcript rather than as chat turns: tool
calls and their outputs without the tools' definitions trip up strict chat templates, and any
model, however small, can read a transcript.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.contract import Operation, WireProtocol
from gateway.streaming import StreamTranslator
from gateway.translate import ChatMessage, IdFactory, Translated, decode_chat, encode, new_id, raw
from gateway.translate.responses import Item, ResponsesRequest, chat_messages, input_items
from gateway.translate.responses_compact_stream import CompactionStream, compaction_item
from gateway.translate.responses_items import ResponseTemplate, responses_usage
from gateway.wire import ClientRequest, Usage

SUMMARISER_PROMPT = (
    "You compact the history of a conversation between a user and an AI assistant that uses "
    "tools, so the assistant can carry on from your summary alone. Write a concise summary: "
    "the user's goals and constraints, what was done and found (files, commands, results, "
    "decisions), what is still open, and the next step. Plain text; no preamble."
)
_ASK = "Summarise the conversation above for the assistant that will continue it."


@dataclass(slots=True)
class CompactExchange:
    """One compaction: the summariser's chat request, and the compacted items from its answer."""

    request: ClientRequest
    # The conversation's user messages, as output items (kept verbatim in the answer).
    users: list[dict[str, Any]]
    created_at: int
    ids: IdFactory = new_id
    # Set for a compaction inside POST /v1/responses (Codex's compaction_trigger item): the
    # answer is then a Response whose one output item is the compaction.
    turn: ResponseTemplate | None = None

    def reply(
        self, body: bytes, protocol: WireProtocol = WireProtocol.OPENAI
    ) -> tuple[bytes, Usage | None]:
        chat = decode_chat(body)
        choice = chat.first()
        message = (choice.message if choice else None) or ChatMessage()
        compaction = compaction_item(self.ids("cmp_"), message.content or "")
        if self.turn is not None:
            response = self.turn.response(self.ids("resp_"), "completed", [compaction], chat.usage)
            return encode(response), chat.usage.wire() if chat.usage else None
        answer = {
            "id": self.ids("resp_"),
            "object": "response.compaction",
            "created_at": self.created_at,
            "output": [*self.users, compaction],
            "usage": responses_usage(chat.usage),
        }
        return encode(answer), chat.usage.wire() if chat.usage else None

    def stream(self) -> StreamTranslator:
        # Only a compaction inside a Responses request streams (/responses/compact never does).
        assert self.turn is not None
        return CompactionStream(self.turn)


def prepare_compact(
    request: ResponsesRequest,
    summariser: str,
    created_at: int,
    history: list[Item] | None = None,
    ids: IdFactory = new_id,
    turn: ResponseTemplate | None = None,
) -> CompactExchange:
    """The chat request that summarises ``history`` plus the request's input, for ``summariser``
    (a logical model)."""
    items = [*(history or ()), *input_items(request)]
    conversation = ResponsesRequest(model=request.model, input=items)
    transcript = _transcript(chat_messages(conversation))
    chat: dict[str, Any] = {
        "model": raw(summariser),
        "messages": raw(
            [
                {"role": "system", "content": SUMMARISER_PROMPT},
                {"role": "user", "content": f"{transcript}\n\n{_ASK}"},
            ]
        ),
    }
    if request.max_output_tokens is not None:
        chat["max_tokens"] = raw(request.max_output_tokens)
    stream = turn is not None and bool(request.stream)
    if stream:
        chat["stream"] = raw(True)
    client = ClientRequest(
        Operation.CHAT, summariser, stream, True, Translated(chat), translated=True
    )
    users = [_user_item(item, ids) for item in items if _is_user(item)]
    return CompactExchange(client, users, created_at, ids, turn)


def _is_user(item: Item) -> bool:
    return (item.type or "message") == "message" and (item.role or "user") == "user"


def _user_item(item: Item, ids: IdFactory) -> dict[str, Any]:
    content = item.content
    if isinstance(content, str) or content is None:
        parts: list[dict[str, Any]] = [{"type": "input_text", "text": content or ""}]
    else:
        parts = [
            {"type": "input_text", "text": part.text} for part in content if part.text is not None
        ]
    return {
        "id": ids("msg_"),
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": parts,
    }


def _transcript(messages: list[dict[str, Any]]) -> str:
    lines = [_line(message) for message in messages]
    return "\n\n".join(line for line in lines if line)


def _line(message: dict[str, Any]) -> str:
    role = str(message.get("role", "user")).upper()
    text = _text(message.get("content"))
    calls = [
        f"[calls {call['function']['name']}({call['function']['arguments']})]"
        for call in message.get("tool_calls") or ()
    ]
    body = "\n".join(part for part in (text, *calls) if part)
    return f"{role}: {body}" if body else ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
