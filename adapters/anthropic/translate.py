"""OpenAI chat ⇄ Anthropic's Messages API, for the ``anthropic`` adapter (pure: no I/O).

Requests: system prompt, content parts and images, tools and tool_choice, tool calls and their
results. Answers: text, thinking (as ``reasoning_content``), tool calls, stop reasons, usage
with cache reads and writes, errors, and the event stream as OpenAI chunks whose tool-call
arguments arrive as incrementally as Anthropic sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from adapters.anthropic.errors import stream_error
from adapters.anthropic.thinking import Thinking, carried_block, signed_blocks, with_thinking
from gateway.errors import BadRequest, UpstreamProtocolError
from gateway.translate import encode, parse_arguments, sse_fields

# Anthropic requires max_tokens; OpenAI clients often leave it out.
DEFAULT_MAX_TOKENS = 4096
_DONE = b"data: [DONE]\n\n"

# --- OpenAI chat request → Anthropic -------------------------------------------------------------


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _Call(msgspec.Struct):
    id: str | None = None
    function: _Function | None = None


class _ImageUrl(msgspec.Struct):
    url: str = ""


class _File(msgspec.Struct):
    file_data: str | None = None
    filename: str | None = None


class _Part(msgspec.Struct):
    type: str = ""
    text: str | None = None
    image_url: _ImageUrl | str | None = None
    file: _File | None = None


class _Message(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None
    tool_calls: list[_Call] | None = None
    tool_call_id: str | None = None
    # Anthropic's own thinking, carried through chat (``chat_reply``), going back unchanged.
    thinking_blocks: list[dict[str, Any]] | None = None


class _FunctionDef(msgspec.Struct):
    name: str = ""
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _Tool(msgspec.Struct):
    type: str = "function"
    function: _FunctionDef | None = None


class _JsonSchema(msgspec.Struct):
    schema: dict[str, Any] | None = None


class _ResponseFormat(msgspec.Struct):
    type: str = ""
    json_schema: _JsonSchema | None = None


class ChatRequest(msgspec.Struct):
    messages: list[_Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    response_format: _ResponseFormat | None = None
    # Responses' reasoning.effort arrives as this (gateway/translate/request_fields.py).
    reasoning_effort: str | None = None
    # Anthropic's own thinking setting, sent in a chat body (LiteLLM's clients do): kept as is.
    thinking: dict[str, Any] | None = None


_CHAT_REQUEST = msgspec.json.Decoder(ChatRequest)


def messages_body(fields: Mapping[str, msgspec.Raw], model: str, stream: bool) -> bytes:
    """The Anthropic Messages body for an OpenAI chat body; untranslatable input is a 400."""
    try:
        chat = _CHAT_REQUEST.decode(encode(fields))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadRequest(f"cannot translate the request for an Anthropic upstream: {exc}") from None
    system, messages = _turns(chat.messages)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": chat.max_completion_tokens or chat.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if stream:
        body["stream"] = True
    if chat.temperature is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1.
        body["temperature"] = min(chat.temperature, 1.0)
    if chat.top_p is not None:
        body["top_p"] = chat.top_p
    if chat.stop:
        body["stop_sequences"] = [chat.stop] if isinstance(chat.stop, str) else chat.stop
    tools = [_anthropic_tool(t) for t in chat.tools or () if t.function and t.function.name]
    if tools:
        body["tools"] = tools
        choice = _anthropic_tool_choice(chat.tool_choice, chat.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
    if chat.user:
        body["metadata"] = {"user_id": chat.user}
    fmt = chat.response_format
    if fmt and fmt.type == "json_schema" and fmt.json_schema and fmt.json_schema.schema:
        body["output_config"] = {
            "format": {"type": "json_schema", "schema": fmt.json_schema.schema}
        }
    with_thinking(body, chat.reasoning_effort, chat.thinking)
    return encode(body)


def _turns(messages: list[_Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks and alternating turns; tool results become the user's tool_result blocks."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        if message.role in ("system", "developer"):
            system.extend(b for b in _blocks(message.content) if b["type"] == "text")
        elif message.role == "assistant":
            add(
                "assistant",
                signed_blocks(message.thinking_blocks)
                + _blocks(message.content)
                + [_tool_use(c) for c in message.tool_calls or ()],
            )
        elif message.role in ("tool", "function"):
            add("user", [_tool_result(message)])
        else:
            add("user", _blocks(message.content))
    return system, turns


def _blocks(content: str | list[_Part] | None) -> list[dict[str, Any]]:
    # Anthropic rejects empty text blocks.
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        if part.type == "text" and part.text:
            blocks.append({"type": "text", "text": part.text})
        elif part.type == "image_url" and part.image_url:
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            blocks.append({"type": "image", "source": _source(url)})
        elif part.type == "file" and part.file and part.file.file_data:
            source = _source(part.file.file_data)
            if source["type"] == "base64":
                blocks.append({"type": "document", "source": source})
    return blocks


def _source(url: str) -> dict[str, Any]:
    """A data URL becomes base64 data; anything else is fetched by Anthropic from its URL."""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _tool_use(call: _Call) -> dict[str, Any]:
    function = call.function or _Function()
    return {
        "type": "tool_use",
        "id": call.id or "",
        "name": function.name or "",
        "input": parse_arguments(function.arguments),
    }


def _tool_result(message: _Message) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
    blocks = _blocks(message.content)
    if blocks:
        result["content"] = blocks
    return result


def _anthropic_tool(tool: _Tool) -> dict[str, Any]:
    function = tool.function or _FunctionDef()
    spec: dict[str, Any] = {
        "name": function.name,
        "input_schema": function.parameters or {"type": "object", "properties": {}},
    }
    if function.description:
        spec["description"] = function.description
    return spec


def _anthropic_tool_choice(
    choice: str | dict[str, Any] | None, parallel: bool | None
) -> dict[str, Any] | None:
    if choice == "none":
        return {"type": "none"}
    result: dict[str, Any] | None = None
    if choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            result = {"type": "tool", "name": name}
    if parallel is False:
        result = result or {"type": "auto"}
        result["disable_parallel_tool_use"] = True
    return result


# --- Anthropic answers → OpenAI chat ------------------------------------------------------------


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Content(msgspec.Struct):
    type: str = ""
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


class _AnthropicMessage(msgspec.Struct):
    id: str = ""
    model: str = ""
    content: list[_Content] = []
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    index: int | None = None
    message: _AnthropicMessage | None = None
    content_block: _Content | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None


_MESSAGE = msgspec.json.Decoder(_AnthropicMessage)
_EVENT = msgspec.json.Decoder(_Event)

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str:
    return _FINISH.get(stop_reason or "", "stop")


def chat_usage(usage: _Usage | None) -> dict[str, Any]:
    """OpenAI usage counts every input token; Anthropic splits off cache reads and writes."""
    usage = usage or _Usage()
    reads = usage.cache_read_input_tokens or 0
    writes = usage.cache_creation_input_tokens or 0
    prompt = (usage.input_tokens or 0) + reads + writes
    completion = usage.output_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reads, "cache_write_tokens": writes},
    }


def chat_reply(body: bytes, created: int) -> bytes:
    """An Anthropic Message as an OpenAI chat completion."""
    try:
        message = _MESSAGE.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UpstreamProtocolError(
            f"upstream sent something that is not an Anthropic message: {exc}"
        ) from None
    texts = [c.text for c in message.content if c.type == "text" and c.text]
    thoughts = [c.thinking for c in message.content if c.type == "thinking" and c.thinking]
    calls = [
        {
            "id": c.id or "",
            "type": "function",
            "function": {"name": c.name or "", "arguments": encode(c.input or {}).decode()},
        }
        for c in message.content
        if c.type == "tool_use"
    ]
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if thoughts:
        reply["reasoning_content"] = "".join(thoughts)
    carried = [b for b in (carried_block(c) for c in message.content) if b is not None]
    if carried:
        reply["thinking_blocks"] = carried
    if calls:
        reply["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": reply,
        "logprobs": None,
        "finish_reason": finish_reason(message.stop_reason),
    }
    return encode(
        {
            "id": message.id,
            "object": "chat.completion",
            "created": created,
            "model": message.model,
            "choices": [choice],
            "usage": chat_usage(message.usage),
        }
    )


class ChatChunks:
    """Anthropic stream events in, OpenAI chat chunks (complete SSE events) out."""

    def __init__(self, created: int) -> None:
        self._created = created
        self._id = ""
        self._model = ""
        self._tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._start_usage: _Usage | None = None
        self._usage = _Usage()
        self._stop: str | None = None
        self._thinking = Thinking()

    def feed(self, event: bytes) -> list[bytes]:
        name, data = sse_fields(event)
        if name == b"ping":
            return []
        if name == b"error":
            raise stream_error(data)
        try:
            parsed = _EVENT.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise UpstreamProtocolError(
                f"upstream sent an event that is not Anthropic's: {exc}"
            ) from None
        kind = parsed.type
        if kind == "message_start" and parsed.message is not None:
            self._id, self._model = parsed.message.id, parsed.message.model
            self._usage = parsed.message.usage or _Usage()
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start" and parsed.content_block is not None:
            return self._block_start(parsed.index or 0, parsed.content_block)
        if kind == "content_block_delta" and parsed.delta is not None:
            return self._block_delta(parsed.index or 0, parsed.delta)
        if kind == "message_delta":
            return self._message_delta(parsed)
        if kind == "message_stop":
            usage = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": chat_usage(self._usage),
            }
            return [b"data: " + encode(usage) + b"\n\n", _DONE]
        return []

    def _block_start(self, index: int, block: _Content) -> list[bytes]:
        if block.type == "tool_use":
            call = self._tools[index] = len(self._tools)
            arguments = encode(block.input).decode() if block.input else ""
            head = {
                "index": call,
                "id": block.id or "",
                "type": "function",
                "function": {"name": block.name or "", "arguments": arguments},
            }
            return [self._chunk({"tool_calls": [head]})]
        if block.type == "text" and block.text:
            return [self._chunk({"content": block.text})]
        if block.type == "thinking":
            self._thinking.start(index, block.thinking)
            return [self._chunk({"reasoning_content": block.thinking})] if block.thinking else []
        carried = carried_block(block)
        return [self._chunk({"thinking_blocks": [carried]})] if carried else []

    def _block_delta(self, index: int, delta: _Delta) -> list[bytes]:
        if delta.type == "text_delta" and delta.text:
            return [self._chunk({"content": delta.text})]
        if delta.type == "input_json_delta" and delta.partial_json and index in self._tools:
            call = {"index": self._tools[index], "function": {"arguments": delta.partial_json}}
            return [self._chunk({"tool_calls": [call]})]
        if delta.type == "thinking_delta" and delta.thinking:
            self._thinking.add(index, delta.thinking)
            return [self._chunk({"reasoning_content": delta.thinking})]
        if delta.type == "signature_delta" and delta.signature:
            signed = self._thinking.signed(index, delta.signature)
            return [self._chunk({"thinking_blocks": [signed]})]
        return []

    def _message_delta(self, event: _Event) -> list[bytes]:
        usage = event.usage
        if usage is not None:
            # message_delta counts are cumulative; fields it leaves out keep message_start's.
            current = self._usage
            self._usage = _Usage(
                usage.input_tokens if usage.input_tokens is not None else current.input_tokens,
                usage.output_tokens if usage.output_tokens is not None else current.output_tokens,
                usage.cache_creation_input_tokens
                if usage.cache_creation_input_tokens is not None
                else current.cache_creation_input_tokens,
                usage.cache_read_input_tokens
                if usage.cache_read_input_tokens is not None
                else current.cache_read_input_tokens,
            )
        stop = event.delta.stop_reason if event.delta else None
        return [self._chunk({}, finish_reason(stop))]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + encode(chunk) + b"\n\n"
