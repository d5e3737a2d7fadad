"""A fake Anthropic Messages API: a real aiohttp HTTP server on a loopback port.

It speaks Anthropic's documented wire format byte for byte: compact JSON, named SSE events
(``event: message_start`` ... ``event: message_stop``) with a ``ping`` after the first block
starts, ``input_json_delta`` fragments that begin with ``""``, a ``request-id`` header on every
answer, and errors as ``{"type":"error","error":{"type","message"},"request_id"}``. And it
checks requests the way the real API does, so translation bugs fail loudly: the
``anthropic-version`` header, an API key (``x-api-key`` or ``Authorization: Bearer``), required
fields, roles, non-empty text blocks, tool_use/tool_result pairing, thinking signatures.

Usage::

    async with FakeAnthropic() as fake:
        client = AsyncAnthropic(base_url=fake.url, api_key="test-key")
        await client.messages.create(model="ok", max_tokens=64, messages=[...])
        assert fake.requests[-1].body["messages"] == [...]

Scenarios, picked like ``FakeOpenAI``'s (``fake.script``, then ``fake.scenario``, then the
request's ``model`` if it names one, else ``ok``):

======================  ======================================================================
``ok``                  Text ``"echo: <last user text>"`` in ``fake.stream_chunks`` deltas;
                        ``max_tokens`` below that count truncates with ``stop_reason:
                        "max_tokens"``.
``tools``               ``tool_use`` blocks: ``fake.tool_calls`` (``(name, input_json)`` pairs)
                        or one call of the request's first tool with ``{"city":"Paris"}``,
                        after a short text block; streamed input arrives in many fragments.
``thinking``            A thinking block (with a signature), then the ``ok`` text.
``redacted-thinking``   A thinking block, a ``redacted_thinking`` block, then the ``ok`` text.
``error-<NNN>``         Status NNN with Anthropic's error body (429 adds ``retry-after``,
                        529 is ``overloaded_error``).
``error-mid-stream``    ``fake.mid_stream_after`` events, then ``event: error``
                        (``overloaded_error``), then the body ends cleanly.
``drop-mid-stream``     ``fake.mid_stream_after`` events, then the connection closes.
``prompt-too-long``     The API's own context refusal: 400 ``invalid_request_error`` "prompt is
                        too long: N tokens > M maximum", M being ``fake.context_window`` and N
                        M plus the request's input tokens.
======================  ======================================================================

Signatures: the fake signs its thinking (``signature_for``: an HMAC of the text under the fake's
own key, ``fake-sig.`` first) and its redacted thinking's data likewise, and refuses, as the real
API does, a request with one of its signed blocks whose text or signature was changed. Blocks
with signatures of another shape (tests' own literals) are not checked.

Usage always reports ``fake.cache_read`` and ``fake.cache_creation`` cache tokens.

``POST /v1/messages/count_tokens`` checks its body like the real API (the Messages rules minus
``max_tokens``; any field it does not take is "Extra inputs are not permitted") and answers
``{"input_tokens": N}`` with the same N a message's usage reports for those messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import re
import string
import time
from typing import Any

import msgspec
from aiohttp import web

from tests.fakes.openai_upstream import RecordedRequest
from tests.fakes.server import LoopbackServer, serve

OK = "ok"
TOOLS = "tools"
THINKING = "thinking"
REDACTED_THINKING = "redacted-thinking"
THOUGHT = "The user wants an echo."
_SIGNING_KEY = b"turnout fake anthropic"
_SIGNED = "fake-sig."
ERROR_MID_STREAM = "error-mid-stream"
DROP_MID_STREAM = "drop-mid-stream"
PROMPT_TOO_LONG = "prompt-too-long"
SCENARIOS = frozenset(
    {OK, TOOLS, THINKING, REDACTED_THINKING, ERROR_MID_STREAM, DROP_MID_STREAM, PROMPT_TOO_LONG}
)

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_ALNUM = string.ascii_letters + string.digits
_FRAGMENT = re.compile(r"\w+|\W+")
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request (scripted by the fake upstream)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found (scripted by the fake upstream)."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "search_result",
        "server_tool_use",
        "web_search_tool_result",
    }
)


def signature_for(text: str) -> str:
    """The signature the fake gives a thinking block (or redacted data) with this text."""
    return _SIGNED + hmac.new(_SIGNING_KEY, text.encode(), hashlib.sha256).hexdigest()


def _check_signature(block: dict[str, Any], where: str) -> None:
    if block["type"] == "redacted_thinking":
        data = block.get("data")
        if not isinstance(data, str) or not data.startswith(_SIGNED):
            return
        head, _, tag = data.removeprefix(_SIGNED).rpartition(".")
        valid = hmac.compare_digest(signature_for(head), _SIGNED + tag)
    else:
        signature, text = block.get("signature"), block.get("thinking")
        if not isinstance(signature, str) or not signature.startswith(_SIGNED):
            return
        valid = isinstance(text, str) and hmac.compare_digest(signature_for(text), signature)
    if not valid:
        raise Invalid(f"{where}: Invalid `signature` in `{block['type']}` block")


def _rid(prefix: str, n: int = 24) -> str:
    return prefix + "".join(random.choices(_ALNUM, k=n))


def _encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(obj) + b"\n\n"


def error_status(scenario: str) -> int | None:
    code = scenario[6:]
    if scenario.startswith("error-") and len(code) == 3 and code.isdigit():
        return int(code)
    return None


class Invalid(Exception):
    """The request breaks a rule the real API enforces; the message is the API's wording."""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def validate(body: Any) -> None:
    """Anthropic's request checks that a translator could get wrong."""
    if not isinstance(body, dict):
        raise Invalid("There was an error parsing the body of your request.")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise Invalid(f"{key}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise Invalid("max_tokens: Input should be a valid integer greater than 0")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        raise Invalid("temperature: Input should be less than or equal to 1")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or any(
            not isinstance(b, dict) or b.get("type") != "text" for b in system
        ):
            raise Invalid("system: Input should be a valid string or a list of text blocks")
        _check_text_blocks(system, "system")
    _validate_tools(body)
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    pending: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise Invalid(f"messages.{i}.content: Input should be a valid list")
        if isinstance(content, list):
            _check_blocks(blocks, f"messages.{i}.content")
        results = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if message["role"] == "user":
            unexpected = results - pending
            if unexpected:
                raise Invalid(
                    f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{sorted(unexpected)[0]}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )
            if pending - results:
                raise Invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {sorted(pending - results)[0]}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message."
                )
            pending = set()
        else:
            if pending:
                raise Invalid(
                    f"messages.{i}: expected tool_result blocks for the previous tool_use"
                )
            if results:
                raise Invalid(f"messages.{i}: tool_result blocks are only allowed in user messages")
            pending = {b.get("id") for b in blocks if b.get("type") == "tool_use"}


# What POST /v1/messages/count_tokens accepts; anything else is refused, as the real API does.
COUNT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "context_management",
        "output_config",
        "output_format",
    }
)


def validate_count(body: Any) -> None:
    """count_tokens: the Messages checks, without max_tokens, and no field it does not take."""
    if not isinstance(body, dict):
        raise Invalid("There was an error parsing the body of your request.")
    for key in body:
        if key not in COUNT_FIELDS:
            raise Invalid(f"{key}: Extra inputs are not permitted")
    validate({**body, "max_tokens": 1})


def _check_text_blocks(blocks: list[Any], where: str) -> None:
    for j, block in enumerate(blocks):
        if block.get("type") == "text" and not (
            isinstance(block.get("text"), str) and block["text"]
        ):
            raise Invalid(f"{where}.{j}: text content blocks must be non-empty")


def _check_blocks(blocks: list[Any], where: str) -> None:
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") not in _BLOCK_TYPES:
            raise Invalid(f"{where}.{j}: Input tag does not match any of the expected tags")
        kind = block["type"]
        if kind == "tool_use" and (
            not isinstance(block.get("input"), dict) or not block.get("id") or not block.get("name")
        ):
            raise Invalid(f"{where}.{j}.input: Input should be a valid dictionary")
        if kind == "tool_result" and not block.get("tool_use_id"):
            raise Invalid(f"{where}.{j}.tool_use_id: Field required")
        if kind == "thinking" and not block.get("signature"):
            raise Invalid(f"{where}.{j}.signature: Field required")
        if kind in ("thinking", "redacted_thinking"):
            _check_signature(block, f"{where}.{j}")
        if kind == "image":
            source = block.get("source")
            if not isinstance(source, dict) or source.get("type") not in ("base64", "url", "file"):
                raise Invalid(
                    f"{where}.{j}.source: Input tag does not match any of the expected tags"
                )
        if kind == "tool_result" and isinstance(block.get("content"), list):
            _check_blocks(block["content"], f"{where}.{j}.content")
    _check_text_blocks(blocks, where)


def _validate_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        if body.get("tool_choice") is not None:
            raise Invalid("tool_choice may only be specified while providing tools.")
        return
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or not tool.get("name"):
            raise Invalid(f"tools.{k}.name: Field required")
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
            raise Invalid(f"tools.{k}.custom.input_schema: Field required")
    choice = body.get("tool_choice")
    if choice is not None and (
        not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none")
    ):
        raise Invalid("tool_choice: Input tag does not match any of the expected tags")


class FakeAnthropic(LoopbackServer):
    """A scriptable Anthropic API on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        stream_chunks: int = 8,
        mid_stream_after: int = 4,
        retry_after: int = 1,
        cache_read: int = 0,
        cache_creation: int = 0,
        tool_calls: list[tuple[str, str]] | None = None,
        context_window: int = 200_000,
    ) -> None:
        self.api_key = api_key  # None: any non-empty key is accepted
        self.context_window = context_window  # the M of "prompt-too-long"
        self.host = host
        self.stream_chunks = stream_chunks
        self.mid_stream_after = mid_stream_after
        self.retry_after = retry_after
        self.cache_read = cache_read
        self.cache_creation = cache_creation
        self.tool_calls = tool_calls
        self.requests: list[RecordedRequest] = []
        self.script: list[str] = []
        self.scenario: str | None = None
        self._port = 0
        self._runner: web.ServerRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def url(self) -> str:
        """The base URL Anthropic's SDK takes (no ``/v1``)."""
        return self.origin

    def fail_next(self, n: int = 1, status: int = 529) -> None:
        self.script[:0] = [f"error-{status}"] * n

    async def start(self) -> None:
        self._runner, self._port = await serve(self._handle, self.host)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # --- requests ---

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await request.content.read() if request.body_exists else b""
        body: Any  # whatever JSON the client sent; validate() below checks its shape
        try:
            body = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = RecordedRequest(request.method, request.path, headers, body, raw, time.monotonic())
        self.requests.append(rec)
        request_id = _rid("req_011C")
        route = (request.method, request.path)
        if route == ("GET", "/v1/models"):
            return self._json(self._models(), request_id)
        if route not in (("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens")):
            return self._error(404, request_id, "not_found_error", "Not Found")
        if "anthropic-version" not in headers:
            return self._error(
                400, request_id, "invalid_request_error", "anthropic-version: header is required"
            )
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if not key:
            return self._error(
                401, request_id, "authentication_error", "x-api-key header is required"
            )
        if self.api_key is not None and key != self.api_key:
            return self._error(401, request_id, "authentication_error", "invalid x-api-key")
        if request.path.endswith("/count_tokens"):
            try:
                validate_count(body)
            except Invalid as exc:
                return self._error(400, request_id, "invalid_request_error", str(exc))
            return self._json({"input_tokens": self._input_tokens(body or {})}, request_id)
        try:
            validate(body)
        except Invalid as exc:
            return self._error(400, request_id, "invalid_request_error", str(exc))
        scenario = rec.scenario = self._pick(body.get("model"))
        status = error_status(scenario)
        if status is not None:
            kind, message = _ERRORS.get(status, ("api_error", f"Scripted error {status}."))
            return self._error(status, request_id, kind, message)
        if scenario == PROMPT_TOO_LONG:
            tokens = self.context_window + self._input_tokens(body)
            message = f"prompt is too long: {tokens} tokens > {self.context_window} maximum"
            return self._error(400, request_id, "invalid_request_error", message)
        if body.get("stream") is True:
            return await self._stream(request, request_id, scenario, body)
        return self._json(self._message(scenario, body), request_id)

    def _pick(self, model: Any) -> str:
        if self.script:
            return self.script.pop(0)
        if self.scenario is not None:
            return self.scenario
        if isinstance(model, str) and (model in SCENARIOS or error_status(model) is not None):
            return model
        return OK

    # --- answers ---

    @staticmethod
    def _input_tokens(body: dict[str, Any]) -> int:
        """The fake's tokenizer: the same count for count_tokens and a message's usage."""
        text = "".join(_text_of(m.get("content")) for m in body["messages"])
        return 1 + len(text) // 4

    def _usage(self, body: dict[str, Any], output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self._input_tokens(body),
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": output_tokens,
        }

    def _plan(
        self, scenario: str, body: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[list[str]], str]:
        """Content blocks, each block's stream fragments, and the stop reason."""
        if scenario == TOOLS:
            tools = body.get("tools") or [{"name": "get_weather"}]
            calls = self.tool_calls or [(tools[0]["name"], '{"city":"Paris"}')]
            blocks: list[dict[str, Any]] = [{"type": "text", "text": "Let me check."}]
            pieces = [["Let me", " check."]]
            for name, arguments in calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": _rid("toolu_01"),
                        "name": name,
                        "input": msgspec.json.decode(arguments),
                    }
                )
                pieces.append(_FRAGMENT.findall(arguments))
            return blocks, pieces, "tool_use"
        last: dict[str, Any] = next(
            (m for m in reversed(body["messages"]) if m.get("role") == "user"), {}
        )
        text = "echo: " + _text_of(last.get("content"))
        n = max(1, self.stream_chunks)
        chunks = [text[i * len(text) // n : (i + 1) * len(text) // n] for i in range(n)]
        stop = "end_turn"
        if body["max_tokens"] < len(chunks):
            chunks, stop = chunks[: body["max_tokens"]], "max_tokens"
        blocks, pieces = [{"type": "text", "text": "".join(chunks)}], [chunks]
        if scenario in (THINKING, REDACTED_THINKING):
            thought = THOUGHT
            signed = {"type": "thinking", "thinking": thought, "signature": signature_for(thought)}
            blocks.insert(0, signed)
            pieces.insert(0, [thought[:10], thought[10:]])
        if scenario == REDACTED_THINKING:
            secret = "opaque"
            data = _SIGNED + secret + "." + signature_for(secret)[len(_SIGNED) :]
            blocks.insert(1, {"type": "redacted_thinking", "data": data})
            pieces.insert(1, [])
        return blocks, pieces, stop

    def _message(self, scenario: str, body: dict[str, Any]) -> dict[str, Any]:
        blocks, pieces, stop = self._plan(scenario, body)
        return {
            "id": _rid("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self._usage(body, sum(len(p) for p in pieces)),
        }

    def _events(self, scenario: str, body: dict[str, Any]) -> list[bytes]:
        blocks, pieces, stop = self._plan(scenario, body)
        start = {
            "id": _rid("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(body, 1),
        }
        events = [_event("message_start", {"type": "message_start", "message": start})]
        for index, (block, fragments) in enumerate(zip(blocks, pieces, strict=True)):
            if block["type"] == "text":
                head: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": f} for f in fragments]
            elif block["type"] == "redacted_thinking":
                head, deltas = block, []
            elif block["type"] == "thinking":
                head = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": f} for f in fragments]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            else:
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": f} for f in ["", *fragments]]
            events.append(
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": head},
                )
            )
            if index == 0:
                events.append(PING)
            events.extend(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": d},
                )
                for d in deltas
            )
            events.append(
                _event("content_block_stop", {"type": "content_block_stop", "index": index})
            )
        output = sum(len(p) for p in pieces)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": output},
        }
        events.append(_event("message_delta", delta))
        events.append(_event("message_stop", {"type": "message_stop"}))
        return events

    async def _stream(
        self, request: web.BaseRequest, request_id: str, scenario: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        events = self._events(scenario, body)
        broken = scenario in (ERROR_MID_STREAM, DROP_MID_STREAM)
        if broken:
            events = events[: self.mid_stream_after]
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": request_id,
            }
        )
        try:
            await response.prepare(request)
            for event in events:
                await response.write(event)
                await asyncio.sleep(0)
            if scenario == ERROR_MID_STREAM:
                error = {
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                }
                await response.write(_event("error", error))
            elif scenario == DROP_MID_STREAM and request.transport is not None:
                request.transport.close()
        except ConnectionError:
            pass
        return response

    def _models(self) -> dict[str, Any]:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-05-14T00:00:00Z"}
            for m in ("ok", "tools")
        ]
        return {"data": data, "has_more": False, "first_id": "ok", "last_id": "tools"}

    @staticmethod
    def _json(obj: Any, request_id: str) -> web.Response:
        return web.Response(
            body=_encode(obj),
            headers={"Content-Type": "application/json", "request-id": request_id},
        )

    def _error(self, status: int, request_id: str, kind: str, message: str) -> web.Response:
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }
        headers = {"Content-Type": "application/json", "request-id": request_id}
        if status == 429:
            headers["retry-after"] = str(self.retry_after)
        return web.Response(status=status, body=_encode(body), headers=headers)


def parse_events(stream: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split an Anthropic SSE body into (event name, data), checking the framing on the way.

    Every event must be exactly ``event: <name>\\ndata: <json>\\n\\n`` with the name repeated
    as the data's ``type``: what Anthropic sends, and what its SDKs rely on.
    """
    events = []
    assert stream.endswith(b"\n\n") or not stream, stream[-80:]
    for block in stream.split(b"\n\n")[:-1]:
        lines = block.split(b"\n")
        assert len(lines) == 2, block
        assert lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), block
        name = lines[0][7:].decode()
        data = msgspec.json.decode(lines[1][6:])
        assert data["type"] == name, block
        events.append((name, data))
    return events
