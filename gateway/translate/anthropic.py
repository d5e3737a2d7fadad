"""Anthropic's Messages API in front of OpenAI chat: what Claude Code sends, and how it is forwarded.

A Messages request becomes an OpenAI chat body (a ``Translated``) and keeps the original as the
request's ``native`` body, so an Anthropic upstream receives the request untouched. What has a
meaning in OpenAI chat is translated; the rest (thinking settings, cache_control, betas, server
tools, context_management) is dropped without error, because a local engine must not see what it
cannot handle. Thinking blocks in the history become ``reasoning_content``
(``gateway.translate.reasoning``). The answers go back through ``gateway.translate.anthropic_replies``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway import tokens
from gateway.contract import Native, Operation, WireProtocol
from gateway.errors import BadRequest
from gateway.translate import (
    Fields,
    IdFactory,
    Translated,
    decode_client,
    encode,
    is_object,
    new_id,
    raw,
    tool_arguments,
)
from gateway.translate.anthropic_replies import MessageStream, render_message
from gateway.translate.prefix import BILLING_LINE_START
from gateway.translate.reasoning import anthropic_signed, joined, without_unsigned_thinking
from gateway.wire import ClientRequest, Usage

PROTOCOL = WireProtocol.ANTHROPIC
# Client headers an Anthropic upstream needs to understand the original request.
FORWARDED_HEADERS = ("anthropic-beta", "anthropic-version")

# --- the request, as clients send it ------------------------------------------------------------


class Source(msgspec.Struct):
    type: str = ""
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class Block(msgspec.Struct):
    """Any content block; only the fields some translation reads are declared."""

    type: str
    text: str | None = None
    source: Source | None = None
    id: str | None = None
    name: str | None = None
    # Raw JSON: a tool input only ever travels on, as OpenAI's arguments string.
    input: msgspec.Raw = msgspec.Raw()
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None
    title: str | None = None
    # thinking blocks (redacted_thinking carries ``data``, which no translation reads)
    thinking: str | None = None
    signature: str | None = None


class Turn(msgspec.Struct):
    role: str
    content: str | list[Block]


class ToolDef(msgspec.Struct):
    name: str = ""
    description: str | None = None
    # Raw JSON: schemas travel on unchanged; decoding them would only cost time.
    input_schema: msgspec.Raw = msgspec.Raw()
    # None or "custom" for client tools; server tools (web_search_..., bash_...) carry a version.
    type: str | None = None


class ToolChoice(msgspec.Struct):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(msgspec.Struct):
    type: str
    budget_tokens: int | None = None


class OutputFormat(msgspec.Struct):
    type: str
    schema: msgspec.Raw = msgspec.Raw()


class OutputConfig(msgspec.Struct):
    format: OutputFormat | None = None


class Metadata(msgspec.Struct):
    # Claude Code: user, account and session ids, one session per conversation.
    user_id: str | None = None


class MessagesRequest(msgspec.Struct):
    model: str
    messages: list[Turn]
    max_tokens: int | None = None
    system: str | list[Block] | None = None
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # Read only to say they are ignored on the way to a chat upstream (x-turnout-ignored).
    service_tier: str | None = None
    top_k: int | None = None
    context_management: msgspec.Raw = msgspec.Raw()
    metadata: Metadata | None = None


# Request fields a chat upstream cannot honour (README: "Request fields"); a native Anthropic
# upstream gets them with the rest of the original body.
_IGNORED = ("service_tier", "top_k", "context_management")


class CountRequest(msgspec.Struct):
    messages: list[Turn]
    model: str = ""
    system: str | list[Block] | None = None
    tools: list[ToolDef] | None = None


_REQUEST = msgspec.json.Decoder(MessagesRequest)
_COUNT = msgspec.json.Decoder(CountRequest)
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])


@dataclass(slots=True)
class MessagesExchange:
    """One Messages request: the chat request to forward, and how to answer in Anthropic's shape."""

    request: ClientRequest
    model: str
    thinking: bool
    ids: IdFactory = new_id

    def reply(
        self, body: bytes, protocol: WireProtocol = WireProtocol.OPENAI
    ) -> tuple[bytes, Usage | None]:
        return render_message(body, self.model, self.thinking, self.ids, protocol)

    def stream(self) -> MessageStream:
        return MessageStream(self.model, self.thinking, self.ids)


def prepare(body: bytes, headers: Mapping[str, str], ids: IdFactory = new_id) -> MessagesExchange:
    """Decode and translate a Messages request; anything untranslatable is a ``BadRequest``."""
    request = decode_client(_REQUEST, body)
    thinking = request.thinking is not None and request.thinking.type != "disabled"
    native = Native(PROTOCOL, body, headers, _native_rewrite(request))
    chat = chat_fields(request)
    chat.volatile_prefix = opens_with_billing_line(request.system)
    client = ClientRequest(
        Operation.CHAT,
        request.model,
        bool(request.stream),
        True,
        chat,
        native,
        translated=True,
        ignored=",".join(name for name in _IGNORED if getattr(request, name)),
        affinity=(request.metadata.user_id or "") if request.metadata else "",
    )
    return MessagesExchange(client, request.model, thinking, ids)


def opens_with_billing_line(system: str | list[Block] | None) -> bool:
    """Whether the system prompt starts with Claude Code's per-request billing line."""
    first = system if isinstance(system, str) else (system[0].text if system else None)
    return first is not None and first.startswith(BILLING_LINE_START)


def _native_rewrite(request: MessagesRequest) -> Callable[[Fields], Fields]:
    """What the original body needs before Anthropic takes it: ``role: "system"`` turns moved,
    thinking blocks Anthropic did not sign removed (``gateway.translate.reasoning``).

    Claude Code sometimes puts a system turn inside ``messages``; the API wants it in ``system``.
    Signed thinking blocks are never touched. The thinking is looked for only when an Anthropic
    upstream takes the body (``Native.fields`` is lazy): most requests never pay for it.
    """
    moves_system = any(turn.role == "system" for turn in request.messages)

    def rewrite(fields: Fields) -> Fields:
        unsigned = [i for i, turn in enumerate(request.messages) if _has_unsigned_thinking(turn)]
        if not unsigned and not moves_system:
            return fields
        turns = _RAW_LIST.decode(fields["messages"])
        for i in unsigned:
            turns[i] = without_unsigned_thinking(turns[i])
        if not moves_system:
            return {**fields, "messages": raw(turns)}
        kept = [t for t, turn in zip(turns, request.messages, strict=True) if turn.role != "system"]
        extra = [
            {"type": "text", "text": text}
            for turn in request.messages
            if turn.role == "system" and (text := _plain_text(turn.content))
        ]
        system: list[Any] = []
        if isinstance(request.system, str) and request.system:
            system.append({"type": "text", "text": request.system})
        elif isinstance(request.system, list):
            system.extend(_RAW_LIST.decode(fields["system"]))
        native = dict(fields)
        native["messages"] = raw(kept)
        native["system"] = raw(system + extra)
        return native

    return rewrite


def _has_unsigned_thinking(turn: Turn) -> bool:
    content = turn.content
    return (
        turn.role == "assistant"
        and not isinstance(content, str)
        and any(b.type == "thinking" and not anthropic_signed(b.signature) for b in content)
    )


def chat_fields(request: MessagesRequest) -> Translated:
    """The OpenAI chat body with the same meaning, one level deep."""
    messages = chat_messages(request)
    fields = Translated(
        {"model": raw(request.model), "messages": raw(messages)},
        reasoning_history=any("reasoning_content" in m for m in messages),
    )
    if request.stream:
        fields["stream"] = raw(True)
    if request.max_tokens is not None:
        fields["max_tokens"] = raw(request.max_tokens)
    if request.stop_sequences:
        fields["stop"] = raw(request.stop_sequences)
    if request.temperature is not None:
        fields["temperature"] = raw(request.temperature)
    if request.top_p is not None:
        fields["top_p"] = raw(request.top_p)
    tools = [_chat_tool(i, t) for i, t in enumerate(request.tools or ()) if _is_client_tool(t)]
    if tools:
        fields["tools"] = raw(tools)
        choice = request.tool_choice
        if choice is not None:
            fields["tool_choice"] = raw(_chat_tool_choice(choice))
            if choice.disable_parallel_tool_use:
                fields["parallel_tool_calls"] = raw(False)
    output = request.output_config
    if (
        output
        and output.format
        and output.format.type == "json_schema"
        and is_object(output.format.schema)
    ):
        schema = {"name": "output", "schema": output.format.schema}
        fields["response_format"] = raw({"type": "json_schema", "json_schema": schema})
    return fields


def chat_messages(request: MessagesRequest) -> list[dict[str, Any]]:
    # Every system text goes first, in order: many local chat templates reject a system
    # message anywhere else, and Claude Code sometimes sends one mid-conversation.
    system = [_plain_text(request.system)] if request.system else []
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(request.messages):
        if turn.role == "system":
            system.append(_plain_text(turn.content))
        elif turn.role == "assistant":
            messages.extend(_assistant_messages(turn.content))
        elif turn.role == "user":
            messages.extend(_user_messages(turn.content))
        else:
            raise BadRequest(
                f"messages[{i}].role: expected 'user' or 'assistant', got {turn.role!r}",
                param=f"messages[{i}].role",
            )
    text = "\n\n".join(s for s in system if s)
    if text:
        messages.insert(0, {"role": "system", "content": text})
    return messages


def _plain_text(content: str | list[Block] | None) -> str:
    if isinstance(content, str):
        return content
    return "\n\n".join(b.text for b in content or () if b.type == "text" and b.text)


def _user_messages(content: str | list[Block]) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages, which OpenAI wants right after the tool calls."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if block.type == "tool_result":
            results.append(_tool_message(block, parts))
        else:
            part = _chat_part(block)
            if part is not None:
                parts.append(part)
    if parts:
        results.append({"role": "user", "content": _chat_content(parts)})
    return results


def _tool_message(block: Block, images: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``tool`` message; its images go to the user message after it (tool messages are text)."""
    if isinstance(block.content, list):
        texts = []
        for inner in block.content:
            part = _chat_part(inner)
            if part is None:
                continue
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(part)
        text = "\n".join(texts)
    else:
        text = block.content or ""
    if block.is_error:
        text = "Error: " + text if text else "Error"
    return {"role": "tool", "tool_call_id": block.tool_use_id or "", "content": text}


def _chat_part(block: Block) -> dict[str, Any] | None:
    if block.type == "text":
        return {"type": "text", "text": block.text} if block.text else None
    source = block.source
    if source is None:
        return None
    if block.type == "image":
        url = _source_url(source)
        return {"type": "image_url", "image_url": {"url": url}} if url else None
    if block.type == "document":
        if source.type == "text" and source.data:
            return {"type": "text", "text": source.data}
        if source.type == "base64" and source.data:
            name = block.title or "document.pdf"
            data = f"data:{source.media_type or 'application/pdf'};base64,{source.data}"
            return {"type": "file", "file": {"filename": name, "file_data": data}}
    return None


def _source_url(source: Source) -> str | None:
    if source.type == "base64" and source.data:
        return f"data:{source.media_type or 'image/png'};base64,{source.data}"
    if source.type == "url" and source.url:
        return source.url
    return None


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    # Plain text is what every OpenAI-compatible server accepts; lists only when needed.
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def _assistant_messages(content: str | list[Block]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}] if content else []
    texts = [b.text for b in content if b.type == "text" and b.text]
    calls = [
        {
            "id": b.id or "",
            "type": "function",
            "function": {"name": b.name or "", "arguments": tool_arguments(b.input)},
        }
        for b in content
        if b.type == "tool_use"
    ]
    # Thinking goes on as reasoning_content (signatures mean nothing to a chat upstream; an
    # adapter whose server does not read the field drops it); redacted thinking is Anthropic's
    # ciphertext, of no use to anyone else.
    thought = joined([b.thinking or "" for b in content if b.type == "thinking"])
    if not texts and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) or None}
    if thought:
        message["reasoning_content"] = thought
    if calls:
        message["tool_calls"] = calls
    return [message]


def _is_client_tool(tool: ToolDef) -> bool:
    # Server tools (web search, code execution, tool search) exist only on Anthropic's side.
    return bool(tool.name) and tool.type in (None, "custom")


def _chat_tool(i: int, tool: ToolDef) -> dict[str, Any]:
    if not is_object(tool.input_schema):
        raise BadRequest(
            f"tools[{i}].input_schema: expected a JSON schema object",
            param=f"tools[{i}].input_schema",
        )
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.type == "any":
        return "required"
    if choice.type == "none":
        return "none"
    if choice.type == "tool" and choice.name:
        return {"type": "function", "function": {"name": choice.name}}
    return "auto"


# --- count_tokens ------------------------------------------------------------------------------


def count_tokens(body: bytes) -> bytes:
    """``{"input_tokens": N}``: an estimate, the same for every upstream a model may use."""
    request = decode_client(_COUNT, body)
    chars = len(_plain_text(request.system)) if request.system else 0
    images = 0
    for turn in request.messages:
        blocks = (
            [Block("text", text=turn.content)] if isinstance(turn.content, str) else turn.content
        )
        for block in _flatten(blocks):
            if block.type == "image" or block.type == "document":
                images += 1
            elif block.type == "tool_use":
                chars += len(block.name or "") + len(tool_arguments(block.input))
            else:
                chars += len(block.text or "")
    for tool in request.tools or ():
        schema = len(tool.input_schema) if tool.input_schema else 0
        chars += len(tool.name) + len(tool.description or "") + schema
    return encode({"input_tokens": tokens.from_message_parts(chars, images, len(request.messages))})


def _flatten(blocks: list[Block]) -> list[Block]:
    flat: list[Block] = []
    for block in blocks:
        flat.append(block)
        if isinstance(block.content, list):
            flat.extend(_flatten(block.content))
        elif isinstance(block.content, str):
            flat.append(Block("text", text=block.content))
    return flat
