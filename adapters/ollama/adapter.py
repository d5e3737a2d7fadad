"""The Ollama adapter: the protocol over HTTP, and model management for the engine supervisor."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import msgspec

from adapters.base import AdapterRegistry, Operation, Probe, UpstreamReply, UpstreamRequest
from adapters.http import (
    bearer_headers,
    mapped_client_errors,
    open_event_stream,
    probe_timeout,
    stream_timeout,
    whole_answer_timeout,
)
from adapters.ollama.replies import (
    EMBEDDINGS,
    REPLY,
    chat_completion,
    embedding_list,
    raise_in_band,
    text_completion,
)
from adapters.ollama.requests import KeepAlive, chat_body, embed_body, generate_body
from adapters.ollama.stream import ChatChunks, Chunks, NDJSONStream, TextChunks
from gateway.config.upstreams import Provider
from gateway.errors import (
    BadRequest,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatus,
    UpstreamTimeout,
)

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One model Ollama holds in memory (``GET /api/ps``)."""

    name: str  # as Ollama lists it: with its tag, e.g. "llama3.2:latest"
    size: int  # bytes in memory, VRAM included
    size_vram: int  # bytes of ``size`` in GPU memory
    expires_at: datetime | None  # when Ollama unloads it if idle; None if it did not say


class _Running(msgspec.Struct):
    name: str
    size: int = 0
    size_vram: int = 0
    expires_at: datetime | None = None
    # The context the model was loaded with (num_ctx), not the one it was trained for.
    context_length: int = 0


class _RunningList(msgspec.Struct):
    models: list[_Running] | None = None


class _Version(msgspec.Struct):
    version: str = "?"


_RUNNING = msgspec.json.Decoder(_RunningList)
_VERSION = msgspec.json.Decoder(_Version)


# --- the adapter -----------------------------------------------------------------------------


class OllamaAdapter:
    """Speaks Ollama's native API; answers in OpenAI's wire format; manages Ollama's models."""

    def __init__(
        self,
        name: str,
        provider: Provider,
        session: aiohttp.ClientSession,
        keep_alive: KeepAlive | None = None,
    ) -> None:
        self.name = name
        self.provider = provider
        self._session = session
        self._root = ollama_root(provider.base_url)
        # None: each request leaves Ollama's own default (OLLAMA_KEEP_ALIVE, 5m) in place.
        self._keep_alive = keep_alive
        # Ollama's cloud and authenticating proxies take a bearer token.
        self._headers = bearer_headers(provider)
        self._send_timeout = whole_answer_timeout(provider.timeouts)
        self._stream_timeout = stream_timeout(provider.timeouts)

    # --- the adapter protocol -----------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> UpstreamReply:
        model, fields, keep = request.model, request.fields, self._keep_alive
        created = int(time.time())
        if request.op is Operation.EMBEDDINGS:
            embedded = await self._post("/api/embed", embed_body(fields, model), EMBEDDINGS)
            return _json_reply(embedding_list(embedded, request))
        if request.op is Operation.COMPLETIONS:
            reply = await self._post(
                "/api/generate", generate_body(fields, model, False, keep), REPLY
            )
            return _json_reply(text_completion(reply, request, created))
        reply = await self._post("/api/chat", chat_body(fields, model, False, keep), REPLY)
        return _json_reply(chat_completion(reply, request, created))

    async def open_stream(self, request: UpstreamRequest) -> NDJSONStream:
        model, fields, keep = request.model, request.fields, self._keep_alive
        chunks: Chunks
        if request.op is Operation.CHAT:
            path, body, chunks = (
                "/api/chat",
                chat_body(fields, model, True, keep),
                ChatChunks(request),
            )
        elif request.op is Operation.COMPLETIONS:
            path, body = "/api/generate", generate_body(fields, model, True, keep)
            chunks = TextChunks(request)
        else:
            raise BadRequest(f"{request.op.value} cannot stream", param="stream")
        t = self.provider.timeouts
        started = asyncio.get_running_loop().time()
        # NDJSON arrives under several content types across Ollama versions: not checked.
        response = await open_event_stream(
            self._session,
            self._root + path,
            _encode(body),
            self._headers,
            self._stream_timeout,
            t,
            content_type=None,
        )
        return NDJSONStream(response, chunks, t, started)

    async def probe(self) -> Probe:
        if self.provider.missing_env:
            return Probe(
                False, f"environment variable {', '.join(self.provider.missing_env)} not set"
            )
        try:
            version = await self._get(
                "/api/version", _VERSION, probe_timeout(self.provider.timeouts)
            )
        except UpstreamError as exc:
            return Probe(False, exc.message)
        return Probe(True, f"ready (Ollama {version.version})")

    async def close(self) -> None:
        # The session is shared and owned by the app state.
        return None

    # --- model management, for the engine supervisor ------------------------------------------

    async def loaded_models(self) -> list[LoadedModel]:
        """The models Ollama holds in memory now."""
        running = await self._get("/api/ps", _RUNNING, self._send_timeout)
        return [
            LoadedModel(m.name, m.size, m.size_vram, m.expires_at) for m in running.models or ()
        ]

    async def context_window(self, model: str) -> int | None:
        """The loaded model's context (``/api/ps``); None while it is not loaded."""
        running = await self._get("/api/ps", _RUNNING, self._send_timeout)
        names = (model, f"{model}:latest")
        for loaded in running.models or ():
            if loaded.name in names and loaded.context_length > 0:
                return loaded.context_length
        return None

    async def load(self, model: str, keep_alive: KeepAlive | None = None) -> None:
        """Load ``model`` into memory; returns once Ollama answers that it is loaded.

        ``keep_alive`` is how long Ollama keeps it when idle: a duration (``"10m"``), seconds,
        or negative for ever; None uses the provider's setting, else Ollama's default (5m).
        Waits up to the provider's ``first_byte`` timeout (a large model loads slowly).
        Ollama loads through ``/api/generate``, so embedding-only models answer 400 here.
        """
        body: dict[str, Any] = {"model": model, "stream": False}
        keep = self._keep_alive if keep_alive is None else keep_alive
        if keep is not None:
            body["keep_alive"] = keep
        reply = await self._post("/api/generate", body, REPLY)
        raise_in_band(reply)
        if not reply.done:
            raise UpstreamProtocolError(f"Ollama did not confirm loading {model!r}")

    async def unload(self, model: str, wait: float = 30.0) -> None:
        """Unload ``model`` (``keep_alive: 0``); returns once ``/api/ps`` no longer lists it.

        Ollama answers at once and frees the memory in the background, so a caller about to
        load another model must not trust the answer alone. ``wait=0`` skips the polling;
        a model still listed after ``wait`` seconds raises ``UpstreamTimeout``.
        """
        body = {"model": model, "keep_alive": 0, "stream": False}
        reply = await self._post("/api/generate", body, REPLY)
        raise_in_band(reply)
        deadline = time.monotonic() + wait
        pause = 0.02
        while wait > 0:
            loaded = await self.loaded_models()
            if not any(same_model(model, m.name) for m in loaded):
                return
            if time.monotonic() >= deadline:
                raise UpstreamTimeout(f"Ollama still lists {model!r} {wait:g} s after unloading it")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    # --- HTTP ---------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any], decoder: msgspec.json.Decoder[T]) -> T:
        with mapped_client_errors():
            async with self._session.post(
                self._root + path,
                data=_encode(body),
                headers=self._headers,
                timeout=self._send_timeout,
            ) as response:
                data = await response.read()
        return _decoded(response.status, data, decoder)

    async def _get(
        self, path: str, decoder: msgspec.json.Decoder[T], read_timeout: aiohttp.ClientTimeout
    ) -> T:
        with mapped_client_errors():
            async with self._session.get(
                self._root + path, headers=self._headers, timeout=read_timeout
            ) as response:
                data = await response.read()
        return _decoded(response.status, data, decoder)


def _decoded(status: int, data: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    if status >= 400:
        raise UpstreamStatus(status, data)
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamProtocolError(f"Ollama answered something unexpected: {exc}") from None


def _json_reply(body: dict[str, Any]) -> UpstreamReply:
    return UpstreamReply(200, _encode(body))


def ollama_root(base_url: str) -> str:
    """The server root: ``http://host:11434``, with ``/`` or ``/v1`` (Ollama's OpenAI mount) cut."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root.rstrip("/")


def same_model(a: str, b: str) -> bool:
    """Ollama names ``llama3.2`` and ``llama3.2:latest`` the same model."""
    return _tagged(a) == _tagged(b)


def _tagged(name: str) -> str:
    # The tag follows the last path segment's colon; a registry host may carry a port colon.
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def _factory(name: str, provider: Provider, session: aiohttp.ClientSession) -> OllamaAdapter:
    # Provider has no keep_alive key (yet); read it if a later config adds one.
    keep_alive = getattr(provider, "keep_alive", None)
    return OllamaAdapter(
        name, provider, session, keep_alive if isinstance(keep_alive, str | int) else None
    )


def register(registry: AdapterRegistry) -> None:
    registry.register("ollama", _factory)
