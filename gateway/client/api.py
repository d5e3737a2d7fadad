"""A small typed client for a running turnout's HTTP API, on the standard library only.

One ``urllib`` request per call: no connection pool to go stale, nothing to close, and safe to
share between threads. Every failure becomes a ``ClientError`` whose message fits on one line,
so commands print it and exit instead of showing a traceback.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from types import TracebackType
from typing import Any

USER_AGENT = "turnout-cli/0.1"


class ClientError(Exception):
    """A request that did not get the answer it asked for; ``status`` is None without one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Health:
    state: str  # ready, loading, switching, idle or failed
    role: str | None


@dataclass(frozen=True, slots=True)
class ChatReply:
    text: str
    model: str | None
    usage: dict[str, Any] | None
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class ToolResult:
    ok: bool
    result: Any
    error: str | None
    raw: dict[str, Any]


def error_message(body: bytes) -> str:
    """The message of an error body: OpenAI's envelope, a bare string, or the text itself."""
    text = body.decode(errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300] or "(empty body)"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str) and error:
        return error
    return " ".join(text.split())[:300]


class ChatStream:
    """The content of one streamed reply, delta by delta as it arrives.

    ``close()`` hangs up, which makes the gateway cancel the upstream request: the way to stop
    a reply early (Ctrl-C in ``turnout chat``). After the iteration ends, ``text``, ``model``,
    ``usage`` and ``finish_reason`` describe the whole reply.
    """

    def __init__(self, response: HTTPResponse, where: str) -> None:
        self._response = response
        self._where = where
        self.text = ""
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._response:
                delta = self._event(line.strip())
                if delta is None:
                    break
                if delta:
                    self.text += delta
                    yield delta
            else:
                if self.finish_reason is None:
                    raise ClientError(f"the stream from {self._where} ended before the reply did")
        except (OSError, HTTPException) as exc:
            raise ClientError(f"the stream from {self._where} broke off: {_reason(exc)}") from None
        finally:
            self.close()

    def _event(self, line: bytes) -> str | None:
        """The content delta of one SSE line ("" when it has none), or None at [DONE]."""
        if not line.startswith(b"data:"):
            return ""  # blank separators, ": keepalive" comments, event: names
        data = line[5:].strip()
        if data == b"[DONE]":
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ClientError(f"{self._where} sent a stream event that is not JSON") from None
        if not isinstance(chunk, dict):
            return ""
        if "error" in chunk:
            raise ClientError(f"the reply failed mid-stream: {error_message(data)}")
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        delta = ""
        for choice in chunk.get("choices") or ():
            delta += (choice.get("delta") or {}).get("content") or ""
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return delta

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventStream:
    """The JSON events of a server-sent event stream (``GET /engine/events``), a dict each.

    Iterate on one thread and ``close()`` from another: that ends the iteration, quietly, as
    does the gateway ending the stream.
    """

    def __init__(self, response: HTTPResponse) -> None:
        self._response = response
        # Set at the gateway's ": subscribed" comment, which follows the current states: the
        # events after it are new (a gateway before it never sets it).
        self.subscribed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in self._response:
                line = line.strip()
                if line == b": subscribed":
                    self.subscribed.set()
                if not line.startswith(b"data:"):
                    continue  # comments (keep-alives) and blank separators
                try:
                    item = json.loads(line[5:])
                except ValueError:
                    continue
                if isinstance(item, dict):
                    yield item
        except (OSError, HTTPException, ValueError, AttributeError):
            return  # closed meanwhile (close() empties the response) or broken off

    def close(self) -> None:
        # A thread blocked reading wakes only when the socket is shut down; closing the file
        # object alone would leave it waiting for the next byte.
        raw = getattr(self._response.fp, "raw", None)
        sock = getattr(raw, "_sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._response.close()


class GatewayClient:
    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.admin_key = admin_key
        # Seconds to connect and between two reads, so a slow stream that keeps sending is fine.
        self.timeout = timeout

    # --- the API ------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        data = self.get("/v1/models").get("data")
        return data if isinstance(data, list) else []

    def engine_status(self) -> dict[str, Any]:
        return self.get("/engine/status", admin=True)

    def engine_health(self) -> Health:
        _, body = self.call("GET", "/engine/health", admin=True, expect=(200, 503))
        return Health(str(body.get("state")), body.get("role"))

    def engine_events(self) -> EventStream:
        """GET /engine/events: each role's current state, then every change as it happens."""
        return EventStream(self._open("GET", "/engine/events", None, admin=True))

    def switch(self, role: str, *, wait: bool) -> tuple[int, dict[str, Any]]:
        """POST /engine/switch/<role>: 202 switching, 200 ready, 503 (with wait) failed."""
        from urllib.parse import quote

        path = f"/engine/switch/{quote(role, safe='')}" + ("?wait=true" if wait else "")
        return self.call("POST", path, admin=True, expect=(200, 202, 503))

    def chat(self, body: dict[str, Any]) -> ChatReply:
        _, reply = self.call("POST", "/v1/chat/completions", {**body, "stream": False})
        choices = reply.get("choices") or [{}]
        message = choices[0].get("message") or {}
        return ChatReply(
            text=message.get("content") or "",
            model=reply.get("model"),
            usage=reply.get("usage"),
            finish_reason=choices[0].get("finish_reason"),
        )

    def stream_chat(self, body: dict[str, Any]) -> ChatStream:
        stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        response = self._open("POST", "/v1/chat/completions", stream_body, admin=False)
        return ChatStream(response, self.url)

    def tools(self) -> Any:
        return self.get("/v1/tools")

    def call_tool(self, tool: str, arguments: dict[str, Any]) -> ToolResult:
        # A tool that ran and failed answers {"ok": false, ...}, whatever the status code says.
        body: dict[str, Any] = {"tool": tool, "arguments": arguments}
        status, reply = self.call("POST", "/v1/tools/call", body, expect=None)
        if not isinstance(reply, dict) or "ok" not in reply:
            message = error_message(json.dumps(reply).encode())
            raise ClientError(f"HTTP {status}: {message}", status)
        error = reply.get("error")
        if isinstance(error, dict):
            error = error.get("message") or json.dumps(error)
        return ToolResult(bool(reply["ok"]), reply.get("result"), error, reply)

    # --- plumbing -----------------------------------------------------------------------------

    def get(self, path: str, *, admin: bool = False) -> dict[str, Any]:
        _, body = self.call("GET", path, admin=admin)
        if not isinstance(body, dict):
            raise ClientError(f"{self.url}{path} answered with JSON that is not an object")
        return body

    def get_text(self, path: str, *, admin: bool = False) -> str:
        with self._open("GET", path, None, admin=admin) as response:
            return self._read(response).decode()

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        admin: bool = False,
        expect: tuple[int, ...] | None = (200,),
    ) -> tuple[int, Any]:
        """Status and JSON answer. ``expect`` lists the statuses that are answers (None: all);
        any other one raises ``ClientError`` with the gateway's error message."""
        try:
            response = self._open(method, path, body, admin=admin, http_errors=True)
        except urllib.error.HTTPError as exc:
            if expect is not None and exc.code not in expect:
                raise self._http_error(exc) from None
            with exc:  # an HTTPError is also the response, body and all
                status, raw = exc.code, self._read(exc)
        else:
            with response:
                status, raw = response.status, self._read(response)
            if expect is not None and status not in expect:
                raise ClientError(f"HTTP {status}: {error_message(raw)}", status)
        try:
            return status, json.loads(raw)
        except ValueError:
            raise ClientError(f"{self.url}{path} answered HTTP {status} without JSON") from None

    def _open(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        admin: bool,
        http_errors: bool = False,
    ) -> HTTPResponse:
        """The response to one request. An error status raises ``ClientError``, or with
        ``http_errors`` the ``HTTPError`` itself, which still holds the answer."""
        key = (self.admin_key or self.key) if admin else (self.key or self.admin_key)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json, text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if http_errors and exc.fp is not None:
                raise
            raise self._http_error(exc) from None
        except (OSError, HTTPException, ValueError) as exc:
            raise self._transport_error(exc) from None
        return response

    def _read(self, response: HTTPResponse | urllib.error.HTTPError) -> bytes:
        try:
            return response.read()
        except (OSError, HTTPException) as exc:
            raise self._transport_error(exc) from None

    def _http_error(self, exc: urllib.error.HTTPError) -> ClientError:
        try:
            raw = exc.read()
        except (OSError, HTTPException):
            raw = b""
        return ClientError(f"HTTP {exc.code}: {error_message(raw)}", exc.code)

    def _transport_error(self, exc: BaseException) -> ClientError:
        if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
            exc = exc.reason  # urlopen wraps what went wrong while connecting
        if isinstance(exc, TimeoutError):
            return ClientError(f"no answer from turnout at {self.url} within {self.timeout:g} s")
        return ClientError(f"cannot reach turnout at {self.url}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        inner = exc.reason
        if isinstance(inner, BaseException):
            return _reason(inner)
        return str(inner)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
