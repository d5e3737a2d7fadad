"""Every endpoint, fuzzed over HTTP: each answer is a 2xx, a 4xx envelope or a logged 5xx envelope.

The endpoints, their query parameters and path parameters are read from the app's own routes,
so a new endpoint is fuzzed without touching this file. POST bodies are JSON objects with the
field names the endpoints know (values of every JSON type, numbers and strings chosen to break
parsers: nan, 1e23, 30-digit ids, invalid UTF-8), arbitrary bytes, and deeply nested JSON.

The rule (issue 11, item 6): an answer of 500 or more is logged with its request id, and every
non-2xx answer is a JSON error envelope: OpenAI's, or Anthropic's on /v1/messages*. Tool calls
answer their documented ``{ok, result, error, code}`` shape, refusals included.

Short and deterministic in the suite (``derandomize``); ``TURNOUT_FUZZ_EXAMPLES=500`` runs
that many examples per test instead, and ``-s`` prints the tally.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar

from gateway.app import create_app
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import config_of, free_port

ADMIN = "sk-admin-fuzz"
EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "0"))
FUNCTIONS = "tests.tools_fixtures.functions"

# Field names the POST endpoints read (chat, messages, responses, embeddings, memory, tools).
FIELDS = (
    "model", "messages", "stream", "max_tokens", "max_output_tokens", "temperature", "tools",
    "tool_choice", "input", "instructions", "prompt", "system", "metadata", "stream_options",
    "response_format", "text", "previous_response_id", "query", "limit", "channel", "kinds",
    "content", "kind", "project", "embedding", "agent_id", "session_id", "items", "tool",
    "arguments", "role", "wait", "n", "user", "turnout",
)  # fmt: skip
NASTY_TEXT = (
    "nan", "NaN", "inf", "-inf", "1e23", "-1", "0", "", " ", "9" * 30, "mem-" + "9" * 30, "9" * 5000,
    "mem-²", "=HYPERLINK(\"x\")", "\x00", "a" * 300 + ".js", "../../etc/passwd", "chat",
    "embed", "2025-01-01", "99999999999w", "9999-12-31T23:59:59-23:59", "\ud7ff", "model,day",
)  # fmt: skip
NASTY_NUMBERS = (0, -1, 1, 2**63, -(2**63) - 1, 10**30, 1e23, 1e308, -1e308, 0.5)

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NASTY_NUMBERS),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(NASTY_TEXT),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: usually a JSON object of known fields, sometimes anything at all."""
    shape = draw(st.sampled_from(("object", "object", "object", "bytes", "deep", "bad-utf8")))
    if shape == "bytes":
        return draw(st.binary(max_size=64))
    if shape == "deep":
        depth = draw(st.sampled_from((129, 1000, 5000, 20000)))
        opener, closer = draw(st.sampled_from(((b"[", b"]"), (b'{"a":', b"}"))))
        inner = opener * depth + b"1" + closer * depth
        return b'{"model":"chat","messages":' + inner + b"}"
    fields = draw(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6))
    body = json.dumps(fields, allow_nan=True).encode()
    if shape == "bad-utf8":
        body = body.replace(b"{", b'{"\xff\xfe":1,', 1) if body != b"{}" else b'{"\xff":1}'
    return body


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # with {name:type} placeholders
    query: tuple[str, ...]  # query parameter names

    def url(self, values: dict[str, str]) -> str:
        return re.sub(r"\{(\w+):\w+\}", lambda m: quote(values.get(m.group(1), "x")), self.path)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+):\w+\}", self.path)


def quote(text: str) -> str:
    from urllib.parse import quote as _quote

    return _quote(text, safe="")


_NOT_QUERY = {"gateway", "request", "data", "scope", "self"}


def endpoints(app: Litestar) -> list[Endpoint]:
    """Every method and path the app serves (OPTIONS and the WebSocket aside)."""
    found: list[Endpoint] = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            methods = getattr(handler, "http_methods", None)
            if methods is None:  # a raw-ASGI endpoint: it reads POST bodies
                if type(route).__name__ == "ASGIRoute":
                    found.append(Endpoint("POST", route.path, ()))
                continue
            params = tuple(
                name
                for name in handler.parsed_fn_signature.parameters
                if name not in _NOT_QUERY and f"{{{name}:" not in route.path
            )
            found.extend(Endpoint(m, route.path, params) for m in sorted(methods) if m != "OPTIONS")
    return found


# --- the gateway under test, in a thread of its own (hypothesis drives it synchronously) --


@dataclass
class Target:
    port: int
    endpoints: list[Endpoint]
    errors: list[logging.LogRecord]
    tally: Counter[str]


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        self._into.append(record)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    fake = FakeOpenAI(first_byte_delay=0.0, stream_chunks=2)
    fake.start_in_thread()
    database: Path = tmp_path_factory.mktemp("fuzz") / "t.db"
    config = config_of(
        {
            "server": {"database": str(database)},
            "auth": {"admin_key": ADMIN},
            "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
            "models": [
                {"name": "chat", "targets": [{"provider": "up", "model": "ok"}]},
                {"name": "embed", "targets": [{"provider": "up", "model": "ok"}]},
            ],
            "routing": {"retries": 0},
            "plugins": {"enabled": ["tools", "memory"]},
            "memory": {"summarize": {"model": "chat"}},
            "tools": {
                "registry": [
                    {"id": "weather", "executor": "python", "target": f"{FUNCTIONS}:get_weather"},
                    {"id": "broken", "executor": "python", "target": f"{FUNCTIONS}:broken"},
                ]
            },
        }
    )
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="critical")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    errors: list[logging.LogRecord] = []
    handler = _Collect(errors)
    logging.getLogger().addHandler(handler)
    thread.start()
    for _ in range(3000):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    assert server.started, "turnout did not start"
    tally: Counter[str] = Counter()
    try:
        yield Target(port, endpoints(app), errors, tally)
    finally:
        server.should_exit = True
        thread.join(15)
        fake.stop_in_thread()
        logging.getLogger().removeHandler(handler)
        if tally:
            print("\nfuzz tally:", dict(sorted(tally.items())))


def send(
    target: Target, method: str, url: str, body: bytes | None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=20)
    try:
        headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
        connection.request(method, url, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def is_envelope(path: str, body: bytes) -> bool:
    try:
        decoded = json.loads(body)
    except ValueError:
        return False
    if not isinstance(decoded, dict):
        return False
    error = decoded.get("error")
    if path.endswith("/tools/call") and "ok" in decoded:
        return decoded["ok"] is False and isinstance(error, str)
    if path.startswith("/v1/messages"):
        return decoded.get("type") == "error" and isinstance(error, dict) and "message" in error
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def check(target: Target, endpoint: Endpoint, url: str, body: bytes | None) -> None:
    try:
        status, headers, answer = send(target, endpoint.method, url, body)
    except (TimeoutError, OSError) as exc:
        target.tally["hung or reset"] += 1
        raise AssertionError(f"{endpoint.method} {url}: no answer ({exc})") from None
    target.tally["tried"] += 1
    if status < 300:
        target.tally["2xx"] += 1
        return
    target.tally["4xx" if status < 500 else "5xx"] += 1
    where = f"{endpoint.method} {url} body={body[:200] if body else body!r} -> {status} {answer[:300]!r}"
    if not is_envelope(endpoint.path, answer):
        target.tally["non-envelope"] += 1
        raise AssertionError(f"not an error envelope: {where}")
    if status >= 500:
        request_id = headers.get("x-request-id", "?")
        if not any(request_id in r.getMessage() for r in target.errors):
            target.tally["unlogged 5xx"] += 1
            raise AssertionError(f"a {status} nobody logged: {where}")
        target.tally["5xx logged"] += 1


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=EXAMPLES or examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@fuzz_settings(120)
@given(data=st.data())
def test_every_post_body_answers_with_an_envelope_or_success(target: Target, data: Any) -> None:
    posts = [e for e in target.endpoints if e.method == "POST"]
    endpoint = data.draw(st.sampled_from(posts))
    values = {name: data.draw(st.sampled_from(NASTY_TEXT)) for name in endpoint.path_params}
    check(target, endpoint, endpoint.url(values), data.draw(bodies()))


@fuzz_settings(80)
@given(data=st.data())
def test_every_query_parameter_answers_with_an_envelope_or_success(
    target: Target, data: Any
) -> None:
    with_query = [e for e in target.endpoints if e.query]
    endpoint = data.draw(st.sampled_from(with_query))
    values = {name: data.draw(st.sampled_from(NASTY_TEXT)) for name in endpoint.path_params}
    query = data.draw(
        st.dictionaries(
            st.sampled_from(endpoint.query),
            st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=12)),
            min_size=1,
            max_size=4,
        )
    )
    url = endpoint.url(values) + "?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())
    check(target, endpoint, url, b"{}" if endpoint.method == "POST" else None)


@fuzz_settings(40)
@given(data=st.data())
def test_every_path_parameter_answers_with_an_envelope_or_success(
    target: Target, data: Any
) -> None:
    with_path = [e for e in target.endpoints if e.path_params]
    endpoint = data.draw(st.sampled_from(with_path))
    text = st.one_of(st.sampled_from(NASTY_TEXT), st.text(min_size=1, max_size=40))
    values = {name: data.draw(text) for name in endpoint.path_params}
    check(target, endpoint, endpoint.url(values), b"{}" if endpoint.method == "POST" else None)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", b"[" * 5000 + b"]" * 5000),
        ("POST", "/v1/messages", b'{"model":"chat","messages":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("POST", "/v1/tools/call", b'{"tool":"weather","arguments":' + b'{"a":' * 5000 + b"1" + b"}" * 5001),
        ("POST", "/v1/memory/store", b"[" * 5000),
        ("POST", "/v1/responses", b'{"model":"chat","input":"hi","\xff\xfe":1}'),
        ("GET", "/v1/memory/items/mem-" + "9" * 30, None),
        ("DELETE", "/v1/memory/items/mem-" + "9" * 5000, None),
        ("GET", "/v1/usage?limit=" + "9" * 5000, None),
        ("GET", "/v1/requests/recent?after=" + "9" * 5000, None),
        ("GET", "/v1/usage?limit=1e23", None),
        ("GET", "/v1/requests/series?bucket=nan", None),
        ("GET", "/v1/requests/series?since=nan", None),
        ("GET", "/ui/" + "a" * 300 + ".js", None),
        ("GET", "/v1/messages/batches/nope", None),  # Litestar's 404, Anthropic's envelope
        ("DELETE", "/v1/nope", None),
    ],
)  # fmt: skip
def test_the_inputs_that_once_answered_500_now_answer_4xx(
    target: Target, method: str, path: str, body: bytes | None
) -> None:
    status, _, answer = send(target, method, path, body)
    assert 400 <= status < 500, (status, answer[:300])
    assert is_envelope(path, answer), answer[:300]
