"""OpenAI request and response shapes the gateway validates or reads.

Requests are decoded twice, both cheap: once into a typed Struct that checks the fields we
know (a wrong type is a 400 naming the field), and once one level deep into raw JSON values
that are forwarded as they came, so fields we do not model still reach the upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.contract import Native, Operation
from gateway.errors import BadRequest


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(msgspec.Struct):
    type: str
    function: FunctionDef | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    # Passed on as is; also keeps a conversation on one target (ClientRequest.affinity).
    prompt_cache_key: str | None = None


class CompletionRequest(msgspec.Struct):
    model: str
    # A string, a list of strings, a token list or a list of token lists.
    prompt: str | list[Any]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    echo: bool | None = None
    seed: int | None = None
    user: str | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | list[Any]
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None


class PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = 0


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptDetails | None = None
    # Reasoning tokens are part of completion_tokens (OpenAI's convention).
    completion_tokens_details: CompletionDetails | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cached_tokens or 0) if details is not None else 0

    @property
    def reasoning_tokens(self) -> int:
        details = self.completion_tokens_details
        return (details.reasoning_tokens or 0) if details is not None else 0


class HasUsage(msgspec.Struct):
    """Reads only ``usage`` out of a reply or chunk; msgspec skips the rest without building it."""

    usage: Usage | None = None


_SCHEMAS: dict[Operation, type[ChatRequest | CompletionRequest | EmbeddingRequest]] = {
    Operation.CHAT: ChatRequest,
    Operation.COMPLETIONS: CompletionRequest,
    Operation.EMBEDDINGS: EmbeddingRequest,
}
_DECODERS = {op: msgspec.json.Decoder(schema) for op, schema in _SCHEMAS.items()}
_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_USAGE = msgspec.json.Decoder(HasUsage)
_PATH = re.compile(r" - at `\$(.*)`$")


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A validated request: what routing needs, plus the body to forward."""

    op: Operation
    model: str
    stream: bool
    include_usage: bool
    fields: dict[str, msgspec.Raw]
    # The client's original body when it spoke another protocol (see gateway.contract.Native):
    # sent instead of ``fields`` to an upstream that speaks that protocol too.
    native: Native | None = None
    # Answered in another protocol than OpenAI's (see adapters.base.UpstreamRequest).
    translated: bool = False
    # Client fields turnout consciously ignores (``service_tier``...), comma-separated: said
    # in the answer's ``x-turnout-ignored`` header.
    ignored: str = ""
    # Requests with the same key go to the same target of a weighted model while it is
    # healthy (prompt_cache_key, Claude Code's session), so its prompt cache keeps hitting.
    affinity: str = ""

    def max_tokens(self) -> int | None:
        """The completion limit the client asked for (either spelling), if it is a number."""
        for name in ("max_completion_tokens", "max_tokens"):
            raw = self.fields.get(name)
            if raw is not None:
                text = bytes(raw)
                return int(text) if text.isdigit() else None
        return None


def decode_request(op: Operation, body: bytes) -> ClientRequest:
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        typed = _DECODERS[op].decode(body)
        fields = _FIELDS.decode(body)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    stream = bool(getattr(typed, "stream", None))
    options = getattr(typed, "stream_options", None)
    include_usage = bool(options is not None and options.include_usage)
    affinity = getattr(typed, "prompt_cache_key", None) or ""
    return ClientRequest(op, typed.model, stream, include_usage, fields, affinity=affinity)


def usage_of(body: bytes) -> Usage | None:
    """Token usage of a reply or stream chunk, or None when it has none (or is not JSON)."""
    try:
        return _USAGE.decode(body).usage
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _validation_error(message: str) -> BadRequest:
    """Name the offending field the way OpenAI does (``param``), from msgspec's path."""
    match = _PATH.search(message)
    path = match.group(1).lstrip(".") if match else ""
    what = message[: match.start()] if match else message
    missing = re.match(r"Object missing required field `(\w+)`", what)
    if missing:
        field = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return BadRequest(f"missing required field '{field}'", param=field)
    if not path:
        return BadRequest(f"invalid request body: {what}")
    return BadRequest(f"invalid value for '{path}': {what}", param=path)
