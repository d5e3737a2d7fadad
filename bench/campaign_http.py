"""The campaign's client side: answers as plain data, verdicts per case, the bounded case runner.

A case is a coroutine that returns ``(clean, detail)``; the runner bounds it with the category's
timeout (no answer in time: ``hung``) and turns an unexpected exception into ``failed``. Clients
ask for ``identity`` and never decompress, so an encoded body that reaches the client shows as
what it is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp

Verdict = Literal["clean", "failed", "hung"]
Check = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    check: Check


@dataclass(frozen=True, slots=True)
class Result:
    category: str
    case: str
    verdict: Verdict
    detail: str
    seconds: float


@dataclass
class Category:
    name: str
    results: list[Result] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def count(self, verdict: Verdict) -> int:
        return sum(1 for r in self.results if r.verdict == verdict)

    def row(self) -> list[object]:
        return [
            self.name,
            len(self.results),
            self.count("clean"),
            self.count("failed"),
            self.count("hung"),
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tried": len(self.results),
            "clean": self.count("clean"),
            "failed": self.count("failed"),
            "hung": self.count("hung"),
            "notes": self.notes,
            "cases": [asdict(r) for r in self.results],
        }


async def run_cases(
    category: Category, cases: list[Case], limit: float, concurrency: int = 32
) -> None:
    """Run ``cases`` at most ``concurrency`` at a time, each bounded by ``limit`` seconds."""
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> Result:
        async with gate:
            started = time.monotonic()
            verdict: Verdict
            try:
                clean, detail = await asyncio.wait_for(case.check(), limit)
                verdict = "clean" if clean else "failed"
            except TimeoutError:
                verdict, detail = "hung", f"no answer within {limit:.0f} s"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                verdict, detail = "failed", f"{type(exc).__name__}: {exc}"[:300]
            except Exception as exc:  # a bug in the case itself: counted, named, not fatal
                verdict, detail = "failed", f"case error {type(exc).__name__}: {exc}"[:300]
            return Result(category.name, case.name, verdict, detail, time.monotonic() - started)

    category.results.extend(await asyncio.gather(*(one(c) for c in cases)))


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    # The connection ended before the answer did (a stream cut without its last chunk).
    aborted: bool = False

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def envelope(self) -> bool:
        """An OpenAI (``{"error": {...}}``) or Anthropic (``{"type": "error", ...}``) error body."""
        return is_envelope(self.json())

    def brief(self) -> str:
        return f"{self.status} {self.body[:160]!r}"


def is_envelope(data: Any) -> bool:
    """OpenAI's and Anthropic's error bodies, and seed 004's ToolCallResult (``/internal/*``)."""
    if not isinstance(data, dict):
        return False
    error = data.get("error")
    if isinstance(error, dict):
        return isinstance(error.get("message"), str)
    return data.get("ok") is False and isinstance(error, str)


def session(limit: int = 256) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=True),
        auto_decompress=False,
        headers={"Accept-Encoding": "identity"},
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def request(
    client: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    sent = {"Content-Type": "application/json"} if body is not None else {}
    async with client.request(method, url, data=body, headers={**sent, **(headers or {})}) as r:
        parts: list[bytes] = []
        try:
            async for piece in r.content.iter_any():
                parts.append(piece)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            return Answer(r.status, dict(r.headers), b"".join(parts), aborted=True)
        return Answer(r.status, dict(r.headers), b"".join(parts))


async def post_json(
    client: aiohttp.ClientSession, url: str, body: Any, headers: Mapping[str, str] | None = None
) -> Answer:
    return await request(client, "POST", url, json.dumps(body).encode(), headers)


def sse_events(body: bytes) -> list[bytes]:
    """The ``data:`` payloads of an SSE body (comments and event names dropped)."""
    found = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [ln[5:].strip() for ln in block.split(b"\n") if ln.startswith(b"data:")]
        if data:
            found.append(b"\n".join(data))
    return found


def stream_error(body: bytes) -> bool:
    """An SSE body that reports an error in-band (OpenAI ``error`` object or Anthropic event)."""
    for data in sse_events(body):
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if isinstance(event, dict) and (
            "error" in event or event.get("type") in ("error", "response.failed")
        ):
            return True
    return False


def sse_valid(body: bytes) -> bool:
    """Every ``data:`` payload is JSON (or ``[DONE]``): nothing broken was relayed."""
    for data in sse_events(body):
        if data == b"[DONE]":
            continue
        try:
            json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return False
    return True
