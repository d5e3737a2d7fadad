"""Fuzz: malformed bodies on every POST endpoint, named bad paths and queries, WebSocket frames.

No Hypothesis: a fixed list of the shapes that broke gateways before (nesting 5,000 deep,
invalid UTF-8 in a key, numbers past any integer type, wrong types at every top-level key),
plus seeded random byte mutations of a valid body, so two runs send the same inputs. Clean: a
2xx, or an error in the protocol's envelope that is not a 500. Failed: a 500, an error that is
no envelope, a dropped connection. Hung: no answer within the case limit.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import aiohttp

from bench.campaign_faults import Gateway, body_for
from bench.campaign_http import Answer, Case, Category, request, run_cases

_MESSAGES = [{"role": "user", "content": "hi"}]
# Each POST endpoint with a valid body to start from (the fuzz mutates these).
POST_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": body_for("chat", "ok", False),
    "/v1/completions": body_for("completions", "ok", False),
    "/v1/embeddings": body_for("embeddings", "ok", False),
    "/v1/messages": body_for("messages", "ok", False),
    "/v1/messages/count_tokens": {"model": "ok", "messages": _MESSAGES},
    "/v1/responses": body_for("responses", "ok", False),
    "/engine/switch/fast": {},
    "/engine/unload": {"role": "fast"},
    "/v1/tools/call": {"tool": "none", "arguments": {}},
    "/internal/tools/call": {"tool_id": "none", "agent_id": "a", "args": {}},
    "/v1/memory/query": {"query": "hi", "agent_id": "a"},
    "/v1/memory/store": {"text": "hi", "agent_id": "a"},
    "/v1/memory/summarize": {"agent_id": "a"},
    "/internal/agent-memory/query": {"query": "hi", "agent_id": "a"},
    "/internal/agent-memory/store": {"text": "hi", "agent_id": "a"},
    "/internal/agent-memory/summarize": {"agent_id": "a"},
}

DEPTH = 5000
_VALID_TAIL = b',"messages":[{"role":"user","content":"hi"}]}'
FIXED_BODIES: dict[str, bytes] = {
    "empty": b"",
    "not json": b"garbage{",
    "truncated": b'{"model":"ok","messages":[{"role":"user","con',
    "deep array 5000": b"[" * DEPTH + b"]" * DEPTH,
    "deep object 5000": b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
    "deep in messages": b'{"model":"ok","messages":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
    "invalid utf-8 key": b'{"model":"ok","\xff\xfe":1' + _VALID_TAIL,
    "invalid utf-8 value": b'{"model":"ok\xc3\x28"' + _VALID_TAIL,
    "lone surrogate": b'{"model":"\\ud800"' + _VALID_TAIL,
    "huge integer": b'{"model":"ok","max_tokens":1' + b"0" * 400 + _VALID_TAIL,
    "huge float": b'{"model":"ok","temperature":1e400' + _VALID_TAIL,
    "NaN literal": b'{"model":"ok","temperature":NaN' + _VALID_TAIL,
    "duplicate keys": b'{"model":"ok","model":5' + _VALID_TAIL,
    "long key": b'{"' + b"k" * 100_000 + b'":1,"model":"ok"' + _VALID_TAIL,
    "top-level array": b"[]",
    "top-level string": b'"x"',
    "top-level null": b"null",
    "top-level number": b"1e999",
    "messages a string": b'{"model":"ok","messages":"hi","input":5,"prompt":{}}',
    "messages of ints": b'{"model":"ok","messages":[1,2],"max_tokens":8}',
    "role an int": b'{"model":"ok","messages":[{"role":5,"content":"hi"}]}',
    "content an object": b'{"model":"ok","messages":[{"role":"user","content":{"a":1}}]}',
    "stream a string": b'{"model":"ok","stream":"yes"' + _VALID_TAIL,
    "tools garbage": b'{"model":"ok","tools":"x","tool_choice":7' + _VALID_TAIL,
    "nul in model": b'{"model":"ok\\u0000"' + _VALID_TAIL,
}
SWAP_VALUES: tuple[Any, ...] = (None, True, -1, 1e308, "x", [], {}, [[[]]], 10**30, "\u0000")
QUICK_SWAPS: tuple[Any, ...] = (None, [], 10**30)

BAD_PATHS: tuple[tuple[str, str], ...] = (
    ("GET", "/v1/memory/items/mem-" + "9" * 30),
    ("DELETE", "/v1/memory/items/mem-" + "9" * 30),
    ("GET", "/v1/usage?limit=1e23"),
    ("GET", "/v1/usage?limit=1" + "0" * 23),
    ("GET", "/v1/usage?limit=-5"),
    ("GET", "/v1/usage?since=nan"),
    ("GET", "/v1/usage?since=1e400"),
    ("GET", "/v1/usage?group_by=nope"),
    ("GET", "/v1/usage?format=xml"),
    ("GET", "/v1/requests/series?bucket=nan"),
    ("GET", "/v1/requests/series?bucket=0"),
    ("GET", "/v1/requests/series?bucket=-1"),
    ("GET", "/v1/requests/series?bucket=1e400"),
    ("GET", "/v1/requests/recent?limit=1e23"),
    ("GET", "/ui/" + "a" * 300 + ".js"),
    ("GET", "/ui/%00.js"),
    ("GET", "/v1/models/" + "m" * 4000),
    ("GET", "/engine/status?x=%ff"),
)


def swapped(body: dict[str, Any], values: tuple[Any, ...]) -> Iterator[tuple[str, bytes]]:
    """The valid body with one top-level value replaced by a value of another type."""
    for key in body:
        for value in values:
            yield f"{key}={json.dumps(value)[:12]}", json.dumps({**body, key: value}).encode()


def mutated(body: dict[str, Any], count: int, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Random byte edits of the valid body: flips, deletions, insertions of high bytes."""
    base = json.dumps(body).encode()
    for n in range(count):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) or 1)
            edit = rng.randrange(3)
            if edit == 0 and data:
                data[at] = rng.randrange(256)
            elif edit == 1 and data:
                del data[at : at + rng.randint(1, 8)]
            else:
                data[at:at] = bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 3)))
        yield f"mutation {n}", bytes(data)


def inputs(quick: bool, seed: int = 11) -> Iterator[tuple[str, str, str, bytes | None]]:
    """(method, path, label, body) for every fuzz input, in a fixed order."""
    rng = random.Random(seed)
    for path, body in POST_BODIES.items():
        for label, data in FIXED_BODIES.items():
            yield "POST", path, label, data
        yield from (
            ("POST", path, lb, d) for lb, d in swapped(body, QUICK_SWAPS if quick else SWAP_VALUES)
        )
        if not quick:
            yield from (("POST", path, lb, d) for lb, d in mutated(body, 40, rng))
    for method, path in BAD_PATHS:
        yield method, path, "bad path or query", None


def verdict(answer: Answer) -> tuple[bool, str]:
    if answer.status < 400:
        return True, str(answer.status)
    if answer.status == 500:
        return False, f"500 {'envelope' if answer.envelope else 'no envelope'} {answer.brief()}"
    if not answer.envelope:
        return False, "no envelope " + answer.brief()
    return True, f"{answer.status} envelope"


def _case(gw: Gateway, method: str, path: str, label: str, body: bytes | None) -> Case:
    async def check() -> tuple[bool, str]:
        return verdict(await request(gw.client, method, gw.url(path), body))

    return Case(f"{method} {path[:60]} [{label}]", check)


WS_FRAMES: dict[str, str | bytes] = {
    "deep nesting 5000": "[" * DEPTH + "]" * DEPTH,
    "deep request": '{"type":"chat","id":"d","request":'
    + '{"a":' * DEPTH
    + "1"
    + "}" * DEPTH
    + "}",
    "invalid utf-8 binary": b'{"type":"chat","id":"\xff\xfe"}',
    "not an object": "[1,2,3]",
    "unknown type": '{"type":"nope","id":"u"}',
}


def _ws_case(gw: Gateway, label: str, frame: str | bytes) -> Case:
    """A bad frame gets an ``error`` message and the socket lives on (no close 4500/1011)."""

    async def check() -> tuple[bool, str]:
        async with gw.client.ws_connect(gw.url("/v1/chat/ws")) as ws:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            message = await ws.receive(timeout=10)
            if message.type != aiohttp.WSMsgType.TEXT:
                return False, f"socket closed: {message.type.name} {ws.close_code}"
            data = json.loads(message.data)
            alive = not ws.closed
            clean = isinstance(data, dict) and data.get("type") == "error" and alive
            return clean, f"{str(message.data)[:120]} alive={alive}"

    return Case(f"WS /v1/chat/ws [{label}]", check)


async def extra_post_paths(gw: Gateway) -> list[str]:
    """POST paths in the build's OpenAPI schema that the fixed list lacks (a new endpoint)."""
    try:
        answer = await request(gw.client, "GET", gw.url("/schema/openapi.json"))
        paths = answer.json().get("paths", {})
    except (aiohttp.ClientError, AttributeError):
        return []
    return [
        p for p, ops in paths.items()
        if "post" in ops and "{" not in p and p not in POST_BODIES
    ]  # fmt: skip


async def fuzz(gw: Gateway, quick: bool, limit: float) -> Category:
    category = Category("fuzz")
    cases = [_case(gw, *spec) for spec in inputs(quick)]
    extra = await extra_post_paths(gw)
    for path in extra:
        cases += [_case(gw, "POST", path, lb, d) for lb, d in FIXED_BODIES.items()]
    cases += [_ws_case(gw, label, frame) for label, frame in WS_FRAMES.items()]
    await run_cases(category, cases, limit, concurrency=8)
    results = category.results
    category.notes = {
        "endpoints": len(POST_BODIES) + len(extra),
        "extra_endpoints_from_openapi": extra,
        "http_500": sum(1 for r in results if r.detail.startswith("500")),
        "non_envelope": sum(1 for r in results if "no envelope" in r.detail),
    }
    return category
