"""OpenAI requests as Ollama's native ones (pure; raise only ``BadRequest``).

Tool-call arguments become JSON objects, tool results name their tool (``tool_name``), sampling
settings move into ``options`` (``max_tokens`` is ``num_predict``), ``response_format`` is
``format``, images travel as bare base64.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from gateway.errors import (
    BadRequest,
)

KeepAlive = str | int
T = TypeVar("T")

_decode = msgspec.json.decode
# OpenAI sampling fields Ollama reads, under the same names, from ``options``.
_OPTIONS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


# --- OpenAI's requests, decoded typed where the gateway did not already check them -----------


class _InFunctionCall(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any] = ""


class _InToolCall(msgspec.Struct):
    function: _InFunctionCall
    id: str = ""


class _InMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[_InToolCall] | None = None
    tool_call_id: str | None = None
    # Thinking a translated client sent back (llama.cpp's and DeepSeek's name for it).
    reasoning_content: str | None = None


_MESSAGES = msgspec.json.Decoder(list[_InMessage])


# --- requests: OpenAI → Ollama (pure; raise only BadRequest) ---------------------------------


def chat_body(
    fields: dict[str, msgspec.Raw], model: str, stream: bool, keep_alive: KeepAlive | None
) -> dict[str, Any]:
    """The ``/api/chat`` body for an OpenAI chat request."""
    _single_choice(fields)
    try:
        messages = _MESSAGES.decode(fields.get("messages", b"[]"))
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid messages: {exc}", param="messages") from None
    if not messages:
        # Ollama reads an empty chat as "load the model" (or, with keep_alive 0, "unload it").
        raise BadRequest("messages: expected at least one message", param="messages")
    body: dict[str, Any] = {"model": model, "messages": ollama_messages(messages), "stream": stream}
    tools = ollama_tools(field_value(fields, "tools"), field_value(fields, "tool_choice"))
    if tools:
        body["tools"] = tools
    fmt = ollama_format(field_value(fields, "response_format"))
    if fmt is not None:
        body["format"] = fmt
    think = _think(field_value(fields, "reasoning_effort"))
    if think is not None:
        body["think"] = think
    if field_value(fields, "logprobs") is True:
        body["logprobs"] = True
        top = field_value(fields, "top_logprobs")
        if isinstance(top, int):
            body["top_logprobs"] = top
    return _finish_body(body, fields, keep_alive)


def generate_body(
    fields: dict[str, msgspec.Raw], model: str, stream: bool, keep_alive: KeepAlive | None
) -> dict[str, Any]:
    """The ``/api/generate`` body for an OpenAI (legacy) completions request."""
    _single_choice(fields)
    if field_value(fields, "echo") is True:
        raise BadRequest("echo is not supported by Ollama", param="echo")
    suffix = field_value(fields, "suffix")
    # OpenAI completions continue the prompt as given; Ollama would wrap it in the chat
    # template unless raw. A suffix needs the template (fill-in-the-middle), so not raw then.
    body: dict[str, Any] = {"model": model, "prompt": _prompt(field_value(fields, "prompt"))}
    body["raw"] = not isinstance(suffix, str) or not suffix
    if isinstance(suffix, str) and suffix:
        body["suffix"] = suffix
    body["stream"] = stream
    return _finish_body(body, fields, keep_alive)


def embed_body(fields: dict[str, msgspec.Raw], model: str) -> dict[str, Any]:
    """The ``/api/embed`` body for an OpenAI embeddings request."""
    value = field_value(fields, "input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BadRequest(
            "input: Ollama embeds a string or a non-empty list of strings (not token ids)",
            param="input",
        )
    body: dict[str, Any] = {"model": model, "input": value}
    dimensions = field_value(fields, "dimensions")
    if isinstance(dimensions, int):
        body["dimensions"] = dimensions
    return body


def ollama_messages(messages: list[_InMessage]) -> list[dict[str, Any]]:
    """OpenAI chat messages as Ollama's; tool results learn their tool's name from history."""
    names: dict[str, str] = {}  # tool_call_id → function name, from earlier assistant turns
    out = []
    for i, message in enumerate(messages):
        for call in message.tool_calls or ():
            if call.id:
                names[call.id] = call.function.name
        out.append(_message(message, names, f"messages[{i}]"))
    return out


def _message(message: _InMessage, names: dict[str, str], where: str) -> dict[str, Any]:
    role = message.role
    if role == "developer":  # OpenAI's newer name for system
        role = "system"
    if role not in ("system", "user", "assistant", "tool", "function"):
        raise BadRequest(f"{where}.role: unknown role {role!r}", param=f"{where}.role")
    text, images = _content(message.content, f"{where}.content")
    out: dict[str, Any] = {"role": "tool" if role == "function" else role, "content": text}
    if images:
        out["images"] = images
    if message.reasoning_content and role == "assistant":
        out["thinking"] = message.reasoning_content
    if message.tool_calls and role == "assistant":
        out["tool_calls"] = [
            _ollama_call(call, f"{where}.tool_calls[{j}]")
            for j, call in enumerate(message.tool_calls)
        ]
    if out["role"] == "tool":
        call_id = message.tool_call_id
        name = message.name or (names.get(call_id) if call_id else None)
        if name:
            out["tool_name"] = name
        if call_id:
            out["tool_call_id"] = call_id
    return out


def _ollama_call(call: _InToolCall, where: str) -> dict[str, Any]:
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = _decode(arguments) if arguments.strip() else {}
        except msgspec.DecodeError:
            raise BadRequest(
                f"{where}.function.arguments: not valid JSON", param=f"{where}.function.arguments"
            ) from None
    if not isinstance(arguments, dict):
        raise BadRequest(
            f"{where}.function.arguments: expected a JSON object",
            param=f"{where}.function.arguments",
        )
    out: dict[str, Any] = {"function": {"name": call.function.name, "arguments": arguments}}
    if call.id:
        out["id"] = call.id
    return out


def _content(content: str | list[dict[str, Any]] | None, where: str) -> tuple[str, list[str]]:
    """A message's text, and its images as bare base64 (Ollama takes no data: URLs)."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image(part.get("image_url"), f"{where}[{j}].image_url"))
        else:
            raise BadRequest(f"{where}[{j}]: unsupported content part {kind!r}", param=where)
    return "\n".join(texts), images


def _image(value: Any, where: str) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url.startswith("data:"):
        # Fetching URLs on the client's behalf would make the gateway an open proxy.
        raise BadRequest(f"{where}: Ollama takes images as data: URLs only", param=where)
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise BadRequest(f"{where}: expected a base64 data: URL", param=where)
    return data


def ollama_tools(tools: Any, tool_choice: Any) -> list[dict[str, Any]]:
    """OpenAI function tools as Ollama's. Ollama cannot force a call; choices narrow the list."""
    if not tools or tool_choice == "none":
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools: expected a list", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}]: expected an object", param="tools")
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise BadRequest(f"tools[{i}]: Ollama supports function tools only", param="tools")
        # Only what Ollama's tool definition has (OpenAI's ``strict`` has no equivalent).
        kept = {k: function[k] for k in ("name", "description", "parameters") if k in function}
        out.append({"type": "function", "function": kept})
    chosen = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    wanted = chosen.get("name") if isinstance(chosen, dict) else None
    if wanted:
        out = [t for t in out if t["function"].get("name") == wanted]
    return out


def ollama_format(response_format: Any) -> str | dict[str, Any] | None:
    """``response_format`` as Ollama's ``format``: ``"json"`` or a JSON schema."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return schema
        raise BadRequest(
            "response_format.json_schema.schema: expected a JSON schema object",
            param="response_format",
        )
    raise BadRequest(f"response_format: unsupported type {kind!r}", param="response_format")


def ollama_options(fields: dict[str, msgspec.Raw]) -> dict[str, Any]:
    """OpenAI sampling fields as Ollama ``options``; a client's own ``options`` win."""
    options: dict[str, Any] = {}
    for name in _OPTIONS:
        value = field_value(fields, name)
        if value is not None:
            options[name] = value
    limit = field_value(fields, "max_completion_tokens")
    if limit is None:
        limit = field_value(fields, "max_tokens")
    if limit is not None:
        options["num_predict"] = limit
    stop = field_value(fields, "stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else stop
    extra = field_value(fields, "options")  # Ollama-native options sent as a vendor extra
    if isinstance(extra, dict):
        options.update(extra)
    return options


def _finish_body(
    body: dict[str, Any], fields: dict[str, msgspec.Raw], keep_alive: KeepAlive | None
) -> dict[str, Any]:
    options = ollama_options(fields)
    if options:
        body["options"] = options
    # Ollama-native extras pass through unless an OpenAI field already set them.
    for name in ("format", "think"):
        value = field_value(fields, name)
        if value is not None and name not in body:
            body[name] = value
    # The operator's keep_alive is memory policy and beats a client's.
    client_keep_alive = field_value(fields, "keep_alive")
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    elif isinstance(client_keep_alive, str | int):
        body["keep_alive"] = client_keep_alive
    return body


def field_value(fields: dict[str, msgspec.Raw], name: str) -> Any:
    raw = fields.get(name)
    # The gateway decoded the body once already, so every value is valid JSON.
    return None if raw is None else _decode(raw)


def _single_choice(fields: dict[str, msgspec.Raw]) -> None:
    n = field_value(fields, "n")
    if isinstance(n, int) and n > 1:
        raise BadRequest("n > 1 is not supported by Ollama", param="n")


def _think(reasoning_effort: Any) -> bool | str | None:
    if reasoning_effort in ("low", "medium", "high"):
        return str(reasoning_effort)
    if reasoning_effort in ("none", "minimal"):
        return False
    return None


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt: Ollama takes one string prompt (not token ids)", param="prompt")
    return prompt
