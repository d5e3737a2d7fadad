"""A compaction asked for inside ``POST /v1/responses``: Codex's remote compaction ("v2") ends its
input with a ``compaction_trigger`` item and streams the answer, expecting exactly one
``compaction`` output item and ``response.completed``.

The summariser's text is gathered as it streams and only the closing events go out: a
compaction item is whole or nothing (its ``encrypted_content`` cannot be streamed in pieces).
"""

from __future__ import annotations

from typing import Any

from gateway.contract import WireProtocol
from gateway.errors import GatewayError, UpstreamError
from gateway.translate import (
    ChatUsage,
    chunk_data,
    decode_chat,
    encode,
    error_message,
    plain_text,
    sse,
    sse_fields,
)
from gateway.translate.responses_compaction import seal
from gateway.translate.responses_items import ResponseTemplate
from gateway.wire import Usage

TRIGGER = "compaction_trigger"


def compaction_item(item_id: str, summary: str) -> dict[str, Any]:
    return {"id": item_id, "type": "compaction", "encrypted_content": seal(summary.strip())}


class CompactionStream:
    """The summariser's chat chunks in; one compaction item's Responses events out, at the end."""

    def __init__(self, template: ResponseTemplate) -> None:
        self._template = template
        self._id = template.ids("resp_")
        self._seq = 0
        self._text: list[str] = []
        self._chat_usage: ChatUsage | None = None
        self._done = False
        self.usage: Usage | None = None

    def begin(self, protocol: WireProtocol) -> None:
        """The upstream answers OpenAI chat (Responses requests carry no native body)."""

    def feed(self, event: bytes) -> bytes:
        data = chunk_data(event)
        if data is None:
            name, data = sse_fields(event)
            if name == b"error":
                raise UpstreamError(
                    f"upstream error mid-stream: {data.decode('utf-8', 'replace')[:300]}"
                )
        if not data or data == b"[DONE]":
            return b""
        chunk = decode_chat(data)
        if chunk.error is not None:
            raise UpstreamError(f"upstream error mid-stream: {error_message(chunk.error)}")
        if chunk.usage is not None:
            self._chat_usage = chunk.usage
        text = plain_text(chunk)
        if text:
            self._text.append(text)
        return b""

    def finish(self) -> list[bytes]:
        if self._done:
            return []
        self._done = True
        item = compaction_item(self._template.ids("cmp_"), "".join(self._text))
        usage = self._chat_usage
        out = [self._event("response.created", {"response": self._response("in_progress", [])})]
        out.append(self._event("response.output_item.added", {"output_index": 0, "item": item}))
        out.append(self._event("response.output_item.done", {"output_index": 0, "item": item}))
        completed = self._response("completed", [item], usage)
        out.append(self._event("response.completed", {"response": completed}))
        self.usage = usage.wire() if usage else None
        return [b"".join(out)]

    def fail(self, error: GatewayError) -> bytes:
        self._done = True
        body = {
            "code": "server_error" if error.status >= 500 else "invalid_prompt",
            "message": error.message,
        }
        failed = self._template.response(self._id, "failed", [], self._chat_usage, error=body)
        return self._event("response.failed", {"response": failed})

    def _response(
        self, status: str, output: list[dict[str, Any]], usage: ChatUsage | None = None
    ) -> dict[str, Any]:
        return self._template.response(self._id, status, output, usage)

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        event = {"type": kind, "sequence_number": self._seq, **payload}
        self._seq += 1
        return sse(kind.encode(), encode(event))
