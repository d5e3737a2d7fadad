"""One captured exchange (``Entry``): who asked what, and what went back, bodies capped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.captures.redact import Redactor

if TYPE_CHECKING:
    from gateway.asgi import Headers, Scope
    from gateway.pipeline.call import Call


class Body:
    """Bytes up to a cap; what is past it is only counted."""

    __slots__ = ("_cap", "_parts", "kept", "total")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._parts: list[bytes] = []
        self.kept = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self._cap - self.kept
        if room <= 0 or not data:
            return
        piece = data if len(data) <= room else data[:room]
        self._parts.append(piece)
        self.kept += len(piece)

    @property
    def cut(self) -> bool:
        return self.total > self.kept

    def text(self, redactor: Redactor) -> str:
        return redactor.text(b"".join(self._parts).decode("utf-8", "replace"))


class Entry:
    """One captured exchange."""

    __slots__ = (
        "agent_id",
        "finished",
        "id",
        "key_id",
        "model",
        "note",
        "path",
        "request",
        "request_headers",
        "request_id",
        "response",
        "response_headers",
        "started",
        "status",
        "stream",
        "ts",
    )

    def __init__(self, number: int, call: Call, scope: Scope, cap: int) -> None:
        self.id = number
        self.ts = call.ts
        self.started = call.started
        self.request_id = call.request_id
        self.model = call.model
        self.key_id = call.identity.key_id
        self.agent_id = call.identity.agent_id
        self.stream = call.stream
        self.path = str(scope.get("path", ""))
        self.request = Body(cap)
        self.request_headers: Headers = list(scope.get("headers", ()))
        self.response = Body(cap)
        self.response_headers: Headers = []
        self.status: int | None = None
        self.finished: float | None = None
        self.note = ""

    def summary(self) -> dict[str, Any]:
        duration = self.finished - self.started if self.finished is not None else None
        return {
            "id": self.id,
            "ts": self.ts,
            "request_id": self.request_id,
            "model": self.model,
            "key_id": self.key_id,
            "agent_id": self.agent_id,
            "path": self.path,
            "stream": self.stream,
            "status": self.status,
            "done": self.finished is not None,
            "duration_ms": round(duration * 1000, 3) if duration is not None else None,
            "request_bytes": self.request.total,
            "response_bytes": self.response.total,
            "note": self.note,
        }

    def detail(self, redactor: Redactor) -> dict[str, Any]:
        return {
            **self.summary(),
            "request": {
                "headers": redactor.headers(self.request_headers),
                "body": self.request.text(redactor),
                "truncated": self.request.cut,
            },
            "response": {
                "headers": redactor.headers(self.response_headers),
                "body": self.response.text(redactor),
                "truncated": self.response.cut,
            },
        }
