"""Ollama through its native API (``/api/chat``, ``/api/generate``, ``/api/embed``), shown as OpenAI.

Native rather than Ollama's own ``/v1`` mount because model management lives there
(``keep_alive``, load and unload, ``/api/ps``) and so do Ollama-only options and base64 images.
The price is a translation both ways, kept in pure functions below:

- Tool-call arguments are a JSON *string* in OpenAI and a JSON *object* in Ollama; a tool result
  names its tool (``tool_name``), which OpenAI leaves implicit in ``tool_call_id``.
- Sampling settings move into ``options``; ``max_tokens`` is ``num_predict``; ``response_format``
  is ``format`` (``"json"`` or the schema itself).
- Streams are NDJSON, one JSON object per line, ending with a ``done: true`` line that carries the
  token counts. Each tool call arrives whole in one line and becomes one ``delta.tool_calls``
  entry with complete arguments, never content.
- Errors are ``{"error": "<string>"}``, with an HTTP status, or as a line in the middle of a stream.

The package: ``requests`` (OpenAI → Ollama), ``replies`` and ``stream`` (Ollama → OpenAI), ``adapter``
(HTTP and model management).
"""

from __future__ import annotations

from adapters.ollama.adapter import (
    LoadedModel,
    OllamaAdapter,
    ollama_root,
    register,
    same_model,
)
from adapters.ollama.replies import Reply, chat_completion, embedding_list, text_completion
from adapters.ollama.requests import KeepAlive, chat_body, embed_body, generate_body
from adapters.ollama.stream import ChatChunks, NDJSONStream, TextChunks

__all__ = [
    "ChatChunks",
    "KeepAlive",
    "LoadedModel",
    "NDJSONStream",
    "OllamaAdapter",
    "Reply",
    "TextChunks",
    "chat_body",
    "chat_completion",
    "embed_body",
    "embedding_list",
    "generate_body",
    "ollama_root",
    "register",
    "same_model",
    "text_completion",
]
