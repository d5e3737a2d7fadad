"""OpenAI's Responses API in front of OpenAI chat: what Codex CLI sends, and how it is forwarded.

``prepare`` is the stateless path: every request carries the whole conversation (Codex sends
``store: false``). A ``previous_response_id`` continues a stored conversation
(gateway/responses_store): its items are replayed before the request's own (``translate``'s
``history``), on whatever upstream answers now. Input items
become chat messages; function, custom and namespace tools become chat functions (namespace
members are flattened to one name, mapped back by ``gateway.translate.responses_items``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.contract import Native, Operation, WireProtocol
from gateway.errors import BadRequest
from gateway.translate import (
    FIELDS,
    IdFactory,
    Translated,
    decode_client,
    encode,
    is_object,
    new_id,
    raw,
)
from gateway.translate.reasoning import attach
from gateway.translate.reasoning_seal import BLOCKS, carried, text_of, unseal, wants_encrypted
from gateway.translate.request_fields import (
    affinity_key,
    responses_extras,
    wants_reasoning_summary,
)
from gateway.translate.responses_compaction import compaction_messages
from gateway.translate.responses_items import ResponseTemplate, ToolName
from gateway.translate.responses_native import native_usage
from gateway.translate.responses_render import render_response
from gateway.translate.responses_stream import ResponseStream
from gateway.wire import ClientRequest, Usage

# --- the request, as clients send it ------------------------------------------------------------


class Part(msgspec.Struct):
    type: str = ""
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None
    file_data: str | None = None
    filename: str | None = None


class Item(msgspec.Struct):
    """Any input item; a message may omit ``type``."""

    type: str | None = None
    role: str | None = None
    content: str | list[Part] | None = None
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | None = None
    input: str | None = None
    output: str | list[Part] | None = None
    # A compaction item's summary (gateway/translate/responses_compact.py).
    encrypted_content: str | None = None
    # A reasoning item's summary parts (its reasoning_text parts are ``content``).
    summary: list[Part] | None = None


class ToolSpec(msgspec.Struct):
    type: str
    name: str | None = None
    description: str | None = None
    # Raw JSON: schemas travel on unchanged; decoding them would only cost time.
    parameters: msgspec.Raw = msgspec.Raw()
    # Custom (freeform) tools: {"type": "grammar", "syntax": ..., "definition": ...}.
    format: dict[str, Any] | None = None
    # Namespace tools: their members.
    tools: list[ToolSpec] | None = None


class TextFormat(msgspec.Struct):
    type: str = "text"
    name: str | None = None
    schema: msgspec.Raw = msgspec.Raw()
    strict: bool | None = None


class TextConfig(msgspec.Struct):
    format: TextFormat | None = None


class ResponsesRequest(msgspec.Struct):
    model: str
    input: str | list[Item] | None = None
    instructions: str | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: TextConfig | None = None
    previous_response_id: str | None = None
    # None: the API's default, true.
    store: bool | None = None


_REQUEST = msgspec.json.Decoder(ResponsesRequest)
# Request fields a Response object repeats back, verbatim.
_ECHOED = (
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "reasoning",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "user",
)
_SYSTEM_ROLES = ("system", "developer")
_CALLS = ("function_call", "custom_tool_call")


def flat_name(namespace: str, name: str) -> str:
    # Codex's own convention ("mcp__server__" + "tool") when the parts already carry a
    # separator; a double underscore otherwise.
    if namespace.endswith("_") or name.startswith("_"):
        return namespace + name
    return f"{namespace}__{name}"


@dataclass(slots=True)
class ResponsesExchange:
    """One Responses request: the chat request to forward, and how to answer in Responses' shape."""

    request: ClientRequest
    template: ResponseTemplate

    def reply(
        self, body: bytes, protocol: WireProtocol = WireProtocol.OPENAI
    ) -> tuple[bytes, Usage | None]:
        if protocol is WireProtocol.RESPONSES:
            return body, native_usage(body)  # the upstream's own Response, as it is
        return render_response(body, self.template)

    def stream(self) -> ResponseStream:
        return ResponseStream(self.template)


def prepare(body: bytes, created_at: int, ids: IdFactory = new_id) -> ResponsesExchange:
    """Decode and translate a stateless Responses request; anything untranslatable is a
    ``BadRequest``."""
    request, fields = decode(body)
    if request.previous_response_id:
        raise BadRequest(
            "previous_response_id is not supported: turnout stores no responses here "
            "(responses.store is false). Send the whole conversation in 'input'.",
            param="previous_response_id",
        )
    return translate(request, fields, created_at, ids)


def decode(body: bytes) -> tuple[ResponsesRequest, dict[str, msgspec.Raw]]:
    """The request, typed, and every field of it raw (what a Response echoes back)."""
    request = decode_client(_REQUEST, body)
    try:
        # The typed decode skips unknown keys unchecked; this one reads them all.
        fields = FIELDS.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    return request, fields


def input_items(request: ResponsesRequest) -> list[Item]:
    """The request's input as items (a string is one user message)."""
    items = request.input
    if isinstance(items, str):
        return [Item(type="message", role="user", content=items)]
    return items or []


def translate(
    request: ResponsesRequest,
    fields: dict[str, msgspec.Raw],
    created_at: int,
    ids: IdFactory = new_id,
    history: list[Item] | None = None,
    stored: bool = False,
    native: Native | None = None,
) -> ResponsesExchange:
    """The chat request for a decoded Responses request; ``history``: the items of the stored
    conversation it continues (``previous_response_id``), replayed before its own input;
    ``native``: the body as it came, for an upstream that speaks Responses itself."""
    if history:
        request = msgspec.structs.replace(request, input=[*history, *input_items(request)])
    tools, names = chat_tools(request.tools or ())
    messages = chat_messages(request)
    chat = {"model": raw(request.model), "messages": raw(messages)}
    if request.stream:
        chat["stream"] = raw(True)
    if request.max_output_tokens is not None:
        chat["max_tokens"] = raw(request.max_output_tokens)
    if request.temperature is not None:
        chat["temperature"] = raw(request.temperature)
    if request.top_p is not None:
        chat["top_p"] = raw(request.top_p)
    if tools:
        chat["tools"] = raw(tools)
        if request.tool_choice is not None:
            chat["tool_choice"] = raw(_chat_tool_choice(request.tool_choice, names))
        # OpenAI rejects parallel_tool_calls without tools.
        if request.parallel_tool_calls is not None:
            chat["parallel_tool_calls"] = raw(request.parallel_tool_calls)
    response_format = _response_format(request.text)
    if response_format is not None:
        chat["response_format"] = raw(response_format)
    ignored = responses_extras(fields, chat)
    client = ClientRequest(
        Operation.CHAT,
        request.model,
        bool(request.stream),
        True,
        Translated(
            chat,
            reasoning_history=any("reasoning_content" in m for m in messages),
            thinking_blocks=any(BLOCKS in m for m in messages),
        ),
        native,
        translated=True,
        ignored=ignored,
        affinity=affinity_key(fields),
    )
    echo = {k: fields[k] for k in _ECHOED if k in fields}
    template = ResponseTemplate(
        request.model, created_at, echo, names, ids, stored, request.previous_response_id
    )
    template.reasoning_summary = wants_reasoning_summary(fields)
    template.encrypted_reasoning = wants_encrypted(fields)
    return ResponsesExchange(client, template)


def chat_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    # System and developer texts go first, in order: local chat templates often reject a
    # system message anywhere else, and Codex sends developer messages mid-conversation.
    system = [request.instructions] if request.instructions else []
    messages: list[dict[str, Any]] = []
    items = request.input
    if isinstance(items, str):
        items = [Item(role="user", content=items)]
    thoughts: list[str] = []
    blocks: list[dict[str, Any]] = []
    for item in items or ():
        kind = item.type or "message"
        if kind == "reasoning":
            # Goes on as reasoning_content of the answer that follows (gateway.translate.reasoning),
            # with Anthropic's signed blocks when turnout sealed some (gateway.translate.reasoning_seal).
            sealed = unseal(item.encrypted_content)
            if sealed is None:
                thoughts.append(_text(item.content) or _text(item.summary))
            else:
                thoughts.append(text_of(sealed))
                blocks.extend(carried(sealed))
            continue
        count = len(messages)
        if kind == "message":
            if item.role in _SYSTEM_ROLES:
                system.append(_text(item.content))
            else:
                messages.extend(_message(item))
        elif kind in ("function_call", "custom_tool_call"):
            _add_call(messages, item)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.extend(_call_output(item))
        elif kind == "compaction":
            messages.extend(compaction_messages(item.encrypted_content))
        # web_search_call, item_reference...: nothing a chat upstream can use.
        if thoughts or blocks:
            attach(messages, thoughts, len(messages) > count or kind in _CALLS, blocks)
    text = "\n\n".join(s for s in system if s)
    if text:
        messages.insert(0, {"role": "system", "content": text})
    return messages


def _text(content: str | list[Part] | None) -> str:
    if isinstance(content, str):
        return content
    return "\n\n".join(p.text for p in content or () if p.text)


def _message(item: Item) -> list[dict[str, Any]]:
    role = item.role or "user"
    if role not in ("user", "assistant"):
        raise BadRequest(f"input: unknown message role {role!r}", param="input")
    content = item.content
    if isinstance(content, str) or content is None:
        return [{"role": role, "content": content or ""}]
    parts = [p for p in (_chat_part(part) for part in content) if p is not None]
    if role == "assistant" or all(p["type"] == "text" for p in parts):
        text = "\n\n".join(p["text"] for p in parts if p["type"] == "text")
        return [{"role": role, "content": text}] if text or role == "user" else []
    return [{"role": role, "content": parts}]


def _chat_part(part: Part) -> dict[str, Any] | None:
    if part.type in ("input_text", "output_text", "text", "refusal") and part.text:
        return {"type": "text", "text": part.text}
    if part.type == "input_image" and part.image_url:
        image = {"url": part.image_url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if part.type == "input_file" and part.file_data:
        return {
            "type": "file",
            "file": {"filename": part.filename or "file", "file_data": part.file_data},
        }
    return None


def _add_call(messages: list[dict[str, Any]], item: Item) -> None:
    """A call joins the assistant message before it: parallel calls are one chat message."""
    name = item.name or ""
    if item.namespace:
        name = flat_name(item.namespace, name)
    if item.type == "custom_tool_call":
        arguments = encode({"input": item.input or ""}).decode()
    else:
        arguments = item.arguments or "{}"
    call = {
        "id": item.call_id or "",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        if not last.get("content"):
            last["content"] = None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: Item) -> list[dict[str, Any]]:
    output = item.output
    if isinstance(output, str) or output is None:
        return [{"role": "tool", "tool_call_id": item.call_id or "", "content": output or ""}]
    parts = [p for p in (_chat_part(part) for part in output) if p is not None]
    text = "\n".join(p["text"] for p in parts if p["type"] == "text")
    messages: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": item.call_id or "", "content": text}
    ]
    # Tool messages carry text only; images follow as the user's.
    images = [p for p in parts if p["type"] != "text"]
    if images:
        messages.append({"role": "user", "content": images})
    return messages


def chat_tools(specs: Any) -> tuple[list[dict[str, Any]], dict[str, ToolName]]:
    """Chat functions for the client's tools, and the way back from their flat names."""
    tools: list[dict[str, Any]] = []
    names: dict[str, ToolName] = {}
    for spec in specs:
        if spec.type == "namespace" and spec.name:
            for member in spec.tools or ():
                _add_tool(tools, names, member, spec.name)
        else:
            _add_tool(tools, names, spec, None)
    return tools, names


def _add_tool(
    tools: list[dict[str, Any]], names: dict[str, ToolName], spec: ToolSpec, namespace: str | None
) -> None:
    # Hosted tools (web_search, file_search, computer, local_shell...) need OpenAI's servers.
    if not spec.name or spec.type not in ("function", "custom"):
        return
    flat = flat_name(namespace, spec.name) if namespace else spec.name
    custom = spec.type == "custom"
    parameters: dict[str, Any] | msgspec.Raw
    if custom:
        parameters = {
            "type": "object",
            "properties": {"input": {"type": "string", "description": _custom_description(spec)}},
            "required": ["input"],
        }
    else:
        parameters = spec.parameters if is_object(spec.parameters) else _NO_PARAMETERS
    function: dict[str, Any] = {"name": flat, "parameters": parameters}
    if spec.description:
        function["description"] = spec.description
    tools.append({"type": "function", "function": function})
    names[flat] = ToolName(spec.name, namespace, custom)


_NO_PARAMETERS = msgspec.Raw(b'{"type":"object","properties":{}}')


def _custom_description(spec: ToolSpec) -> str:
    """A freeform tool takes raw text; the model sees its grammar to write it right."""
    fmt = spec.format or {}
    if fmt.get("type") == "grammar" and fmt.get("definition"):
        return f"The raw input, in this {fmt.get('syntax', '')} grammar:\n{fmt['definition']}"
    return "The raw input for the tool."


def _chat_tool_choice(choice: str | dict[str, Any], names: dict[str, ToolName]) -> Any:
    if isinstance(choice, str):
        return choice if choice in ("auto", "none", "required") else "auto"
    kind = choice.get("type")
    name = choice.get("name")
    if kind in ("function", "custom") and isinstance(name, str):
        namespace = choice.get("namespace")
        flat = flat_name(namespace, name) if isinstance(namespace, str) else name
        if flat in names:
            return {"type": "function", "function": {"name": flat}}
    if kind == "allowed_tools" and choice.get("mode") == "required":
        return "required"
    return "auto"


def _response_format(text: TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text else None
    if fmt is None:
        return None
    if fmt.type == "json_schema" and is_object(fmt.schema):
        schema: dict[str, Any] = {"name": fmt.name or "output", "schema": fmt.schema}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        return {"type": "json_schema", "json_schema": schema}
    if fmt.type == "json_object":
        return {"type": "json_object"}
    return None
