"""Translation overhead: Anthropic (and Responses) ingress over an OpenAI upstream, vs passthrough.

    .venv/bin/python -m bench.translation [--iterations 3000] [--requests 4000] [--no-e2e]

Two measurements, both against the direct OpenAI passthrough path (``/v1/chat/completions``):

micro  The pure functions alone, timed in this process: per request (decode the client body,
       build the upstream body, render the non-streaming reply) and per streamed chunk (the
       relay's per-event work vs a translator's ``feed`` plus the write), for a small (~2 KB)
       and a Claude Code-sized (~60 KB, 20 tools) conversation.
e2e    turnout as shipped (``python -m gateway serve``) and the fake OpenAI upstream, each in
       its own process; sequential requests from this process; the gateway process's CPU
       seconds per request, for JSON and 20-chunk streams. This is the number the issue's
       target is about: at most 20% more CPU per request than passthrough.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from adapters.base import Operation, UpstreamRequest
from adapters.openai_compat import OpenAICompatAdapter
from gateway.api.proxy import PassthroughStream
from gateway.pipeline.endpoint import HttpClient
from gateway.streaming import StreamTranslator
from gateway.translate import anthropic, responses
from gateway.wire import decode_request, usage_of

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = 20

# --- payloads: one conversation, in each protocol --------------------------------------------------

_SYSTEM = (
    "You are a careful coding assistant working in a large repository. Read before you edit, "
    "keep changes small, run the tests, and explain what you changed and why. "
)
_TURNS = [
    ("user", "The retry policy ignores Retry-After. Where is it, and what should change?"),
    (
        "assistant",
        "It is in gateway/router.py, backoff_delay. It should wait at least Retry-After.",
    ),
    ("user", "Make the change and add a test."),
]


def _schema(i: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": f"File to act on (tool {i})."},
            "content": {"type": "string", "description": "Text to write or search for."},
            "limit": {"type": "integer", "description": "At most this many results."},
        },
        "required": ["path"],
    }


def bodies(system_bytes: int, tools: int) -> dict[str, bytes]:
    """The same request as OpenAI chat, Anthropic Messages and OpenAI Responses bodies."""
    system = (_SYSTEM * (system_bytes // len(_SYSTEM) + 1))[:system_bytes]
    names = [f"tool_{i}" for i in range(tools)]
    chat = {
        "model": "bench",
        "max_tokens": 1024,
        "messages": [{"role": "system", "content": system}]
        + [{"role": r, "content": t} for r, t in _TURNS],
        "tools": [
            {
                "type": "function",
                "function": {"name": n, "description": f"Does {n}.", "parameters": _schema(i)},
            }
            for i, n in enumerate(names)
        ],
    }
    messages = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": r, "content": [{"type": "text", "text": t}]} for r, t in _TURNS],
        "tools": [
            {"name": n, "description": f"Does {n}.", "input_schema": _schema(i)}
            for i, n in enumerate(names)
        ],
        "metadata": {"user_id": "user_bench"},
    }
    resp = {
        "model": "gpt-5-codex",
        "instructions": system,
        "input": [{"role": r, "content": t} for r, t in _TURNS],
        "tools": [
            {"type": "function", "name": n, "description": f"Does {n}.", "parameters": _schema(i)}
            for i, n in enumerate(names)
        ],
        "store": False,
    }
    return {
        k: msgspec.json.encode(v)
        for k, v in (("chat", chat), ("messages", messages), ("responses", resp))
    }


def chat_reply() -> bytes:
    return msgspec.json.encode(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {
                        "role": "assistant",
                        "content": "Done: backoff now honours Retry-After.",
                        "refusal": None,
                    },
                }
            ],
            "usage": {"prompt_tokens": 600, "completion_tokens": 12, "total_tokens": 612},
        }
    )


def chat_stream(chunks: int = CHUNKS) -> list[bytes]:
    """An OpenAI stream with ``chunks`` content deltas and usage, as OpenAI sends it."""
    head = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp",
        "usage": None,
    }

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            **head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": f"word{i} "}) for i in range(chunks)]
    events.append(event({}, "stop"))
    usage = {
        **head,
        "choices": [],
        "usage": {"prompt_tokens": 600, "completion_tokens": chunks, "total_tokens": 620},
    }
    events.append(b"data: " + msgspec.json.encode(usage) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


# --- micro ------------------------------------------------------------------------------------


def per_call(fn: Callable[[], object], iterations: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` mean seconds per call (the least disturbed run)."""
    for _ in range(min(200, iterations)):
        fn()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            fn()
        runs.append((time.perf_counter() - started) / iterations)
    return min(runs)


def _adapter() -> OpenAICompatAdapter:
    # encode_body uses no connection state: skip building a session for it.
    return OpenAICompatAdapter.__new__(OpenAICompatAdapter)


def request_costs(payloads: dict[str, bytes], iterations: int) -> dict[str, float]:
    adapter = _adapter()
    reply = chat_reply()

    def passthrough() -> None:
        request = decode_request(Operation.CHAT, payloads["chat"])
        adapter.encode_body(UpstreamRequest(request.op, request.fields, "m", False, "id"))
        usage_of(reply)

    def messages() -> None:
        exchange = anthropic.prepare(payloads["messages"], {})
        request = exchange.request
        adapter.encode_body(UpstreamRequest(request.op, request.fields, "m", False, "id"))
        exchange.reply(reply)

    def responses_api() -> None:
        exchange = responses.prepare(payloads["responses"], 0)
        request = exchange.request
        adapter.encode_body(UpstreamRequest(request.op, request.fields, "m", False, "id"))
        exchange.reply(reply)

    return {
        "chat": per_call(passthrough, iterations),
        "messages": per_call(messages, iterations),
        "responses": per_call(responses_api, iterations),
    }


class _Sink:
    """Where the measured relay writes: an ASGI send that drops the message."""

    async def __call__(self, message: Any) -> None:
        return None


async def _no_receive() -> Any:
    raise AssertionError("the relay never reads the request")


async def _stream_cost(
    kind: str, payloads: dict[str, bytes], events: list[bytes], streams: int
) -> float:
    sink = _Sink()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(streams):
            response = HttpClient({"headers": []}, _no_receive, sink, limit=0)
            translator: StreamTranslator
            if kind == "chat":
                # OpenAI chat in, OpenAI chat out: the ingress relays through the passthrough.
                translator = PassthroughStream(include_usage=True)
            else:
                exchange = (
                    anthropic.prepare(payloads["messages"], {})
                    if kind == "messages"
                    else responses.prepare(payloads["responses"], 0)
                )
                translator = exchange.stream()
            # The pipeline's relay loop (gateway/pipeline/relay.py), minus the upstream read.
            await response.start([])
            for event in events:
                out = translator.feed(event)
                if out:
                    await response.write(out)
            for piece in translator.finish():
                if piece:
                    await response.write(piece)
        best = min(best, (time.perf_counter() - started) / streams)
    return best


def stream_costs(payloads: dict[str, bytes], iterations: int) -> dict[str, tuple[float, float]]:
    """Per stream (opening and closing events) and per content chunk, in seconds.

    A long stream and one without deltas are relayed; their difference is the
    per-chunk cost, the empty one (minus preparing the request) the per-stream cost.
    """
    streams = max(50, iterations // 10)
    long = 10 * CHUNKS  # long streams: the per-chunk difference stands out of the noise
    costs = {}
    for kind in ("chat", "messages", "responses"):
        full = asyncio.run(_stream_cost(kind, payloads, chat_stream(long), streams))
        empty = asyncio.run(_stream_cost(kind, payloads, chat_stream(0), streams))
        prepare = 0.0
        if kind != "chat":
            prepare = per_call(functools.partial(_prepare, kind, payloads), iterations)
        costs[kind] = (max(0.0, empty - prepare), (full - empty) / long)
    return costs


def _prepare(kind: str, payloads: dict[str, bytes]) -> object:
    if kind == "messages":
        return anthropic.prepare(payloads["messages"], {}).stream()
    return responses.prepare(payloads["responses"], 0).stream()


# --- e2e --------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(
    url: str, body: bytes, headers: dict[str, str], requests: int, stream: bool
) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(requests):
            async with session.post(url, data=body, headers=headers) as response:
                data = await response.read()
                if response.status != 200 or (stream and not data.endswith(b"\n\n")):
                    raise RuntimeError(f"{url}: HTTP {response.status}: {data[:200]!r}")


def e2e(payloads: dict[str, bytes], requests: int) -> dict[str, float]:
    """Gateway CPU seconds per request, by endpoint and JSON/stream."""
    upstream_port, gateway_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "routing.yaml"
        config.write_text(
            "providers:\n"
            f"  up: {{kind: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1', local: true}}\n"
            "models:\n"
            "  - {name: bench, patterns: ['claude-*', 'gpt-5*'], targets: [{provider: up, model: ok}]}\n"
            "server: {log_level: warning}\n"
        )
        upstream = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes.openai_upstream",
                "--port",
                str(upstream_port),
                "--chunks",
                str(CHUNKS),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config),
                "--port",
                str(gateway_port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait(f"http://127.0.0.1:{upstream_port}/v1/models", upstream)
            _wait(f"http://127.0.0.1:{gateway_port}/health", gateway)
            return asyncio.run(_e2e_runs(gateway.pid, gateway_port, payloads, requests))
        finally:
            for proc in (gateway, upstream):
                proc.terminate()
                proc.wait(10)


async def _e2e_runs(
    pid: int, port: int, payloads: dict[str, bytes], requests: int
) -> dict[str, float]:
    """Rounds over every endpoint, in a rotating order: the gateway's cost per request drifts
    a little over its life, and measuring one endpoint after the other would bias the last."""
    origin = f"http://127.0.0.1:{port}"
    paths = {
        "chat": "/v1/chat/completions",
        "messages": "/v1/messages",
        "responses": "/v1/responses",
    }
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    cells = []
    for stream in (False, True):
        for kind, path in paths.items():
            body = msgspec.json.decode(payloads[kind])
            body["stream"] = stream
            cells.append(
                (
                    f"{kind}/{'stream' if stream else 'json'}",
                    origin + path,
                    msgspec.json.encode(body),
                    stream,
                )
            )
    for _, url, raw, stream in cells:
        await _drive(url, raw, headers, max(50, requests // 10), stream)  # warm up
    samples: dict[str, list[float]] = {name: [] for name, *_ in cells}
    rounds = 5
    for r in range(rounds):
        for name, url, raw, stream in cells[r % len(cells) :] + cells[: r % len(cells)]:
            before = _cpu(pid)
            await _drive(url, raw, headers, requests // rounds, stream)
            samples[name].append((_cpu(pid) - before) / (requests // rounds))
    return {name: statistics.median(values) for name, values in samples.items()}


# --- report -----------------------------------------------------------------------------------


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.translation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--iterations", type=int, default=3000, help="micro: calls per measurement")
    parser.add_argument("--requests", type=int, default=4000, help="e2e: requests per cell")
    parser.add_argument("--no-e2e", action="store_true", help="skip the two-process measurement")
    args = parser.parse_args(argv)

    for label, (system, tools) in {
        "small (~2 KB)": (1500, 2),
        "Claude Code-sized (~60 KB)": (40000, 20),
    }.items():
        payloads = bodies(system, tools)
        sizes = ", ".join(f"{k} {len(v) / 1024:.1f} KB" for k, v in payloads.items())
        request = request_costs(
            payloads, args.iterations if system < 10000 else max(200, args.iterations // 10)
        )
        stream = stream_costs(payloads, args.iterations)
        print(f"\nmicro, {label}: {sizes}")
        print("               per request             per stream (open/close)   per chunk")
        print("               (decode, upstream body, ")
        print("                non-streaming reply)")
        for kind in ("chat", "messages", "responses"):
            name = "passthrough" if kind == "chat" else kind
            fixed, chunk = stream[kind]
            print(
                f"  {name:<12}{_us(request[kind])} (x{request[kind] / request['chat']:4.2f})"
                f"   {_us(fixed)}              {_us(chunk)} (x{chunk / stream['chat'][1]:3.1f})"
            )

    if not args.no_e2e:
        print(
            f"\ne2e: gateway CPU per request ({args.requests} sequential requests per cell, "
            "5 rotating rounds, median; small payload)"
        )
        results = e2e(bodies(1500, 2), args.requests)
        for mode in ("json", "stream"):
            base = results[f"chat/{mode}"]
            for kind in ("chat", "messages", "responses"):
                value = results[f"{kind}/{mode}"]
                name = "passthrough" if kind == "chat" else kind
                extra = f"{(value / base - 1) * 100:+6.1f}%" if kind != "chat" else "      "
                print(f"  {mode:<7}{name:<12}{_us(value)}  {extra}")
        worst = max(
            results[f"{k}/{m}"] / results[f"chat/{m}"]
            for k in ("messages", "responses")
            for m in ("json", "stream")
        )
        print(
            f"\n  worst case: {(worst - 1) * 100:+.1f}% CPU per request vs passthrough (target: <= +20%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
