"""Agent-session benchmark (issue 12): recorded Claude Code / Codex sessions replayed against
a real llama-server, through turnout and straight to the engine.

The sessions in bench/sessions/*.json are the request bodies real clients sent through
``turnout launch`` (recorded by bench/record_sessions.py): Anthropic Messages bodies from
Claude Code, Responses bodies from Codex. Each is replayed turn by turn, streamed:

* **turnout**: the bodies as recorded, to ``/v1/messages`` or ``/v1/responses``, for role ``a``
  (a llama.cpp role on a tiny test model); after the middle turn the gateway swaps to role ``b``
  and back (``POST /engine/switch/<role>?wait=true``), as a user switching models would;
* **direct**: the same turns translated to chat by gateway/translate (what turnout sends the
  engine), to a llama-server of the same model and arguments; its "swap" is a stop and a
  fresh start of that server, which is what a swap costs an engine without turnout.

Per turn: prompt tokens, cached tokens (served from the engine's KV cache), re-prefilled
tokens (prompt minus cached), time to first token, and the swap time before that turn.
Then a cell of N back-to-back streamed requests to role ``a`` through turnout: client errors,
extra attempts (``x-turnout-attempts`` > 1) and fallbacks (``x-turnout-fallback``, and the
``turnout_fallbacks_total`` / ``turnout_upstream_reconnects_total`` metrics).

Prompts are not truncated: both stacks run the tiny models with ``-c 32768`` and the trained
context raised to match (``--override-kv``; Claude Code's system prompt and tools are ~19k
tokens). Replies are
capped at ``--max-tokens`` (default 8): the benchmark is about the prompt side.

    .venv/bin/python -m bench.agent_session [--quick] [--json out.json]

``--quick`` (under ~3 minutes): Claude Code's session only, and 200 back-to-back requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.engines.engines import LlamaServer, ensure_models, free_port, llama_server_binary  # noqa: E402

SESSIONS = ROOT / "bench" / "sessions"
CTX = 32768
MODEL_A = "tiny-hello"  # deterministic short reply
MODEL_B = "tiny-spm"  # small and quick to load: the "other" role
# llama-server caps a slot at the model's trained context (4096 for the tiny models): raise
# what the file says, so a whole agent prompt fits without truncation.
LONG_CONTEXT = ["--override-kv", f"llama.context_length=int:{CTX}"]


@dataclass
class Turn:
    stack: str
    session: str
    turn: int
    prompt_tokens: int
    cached_tokens: int
    reprefilled_tokens: int
    ttft_ms: float
    swap_s: float | None = None  # the swap (to b and back to a) just before this turn

    @property
    def cached_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


# ---------------------------------------------------------------- what each protocol reports


def anthropic_usage(events: list[dict[str, Any]]) -> tuple[int, int]:
    """(prompt, cached) from an Anthropic stream: message_start, then message_delta's usage."""
    prompt = cached = 0
    for event in events:
        usage = (event.get("message") or {}).get("usage") or event.get("usage") or {}
        fresh = usage.get("input_tokens") or 0
        read = usage.get("cache_read_input_tokens") or 0
        created = usage.get("cache_creation_input_tokens") or 0
        if fresh or read:
            prompt, cached = fresh + read + created, read
    return prompt, cached


def responses_usage(events: list[dict[str, Any]]) -> tuple[int, int]:
    for event in events:
        # A reply cut at max_output_tokens ends with response.incomplete, usage included.
        if event.get("type") in ("response.completed", "response.incomplete"):
            usage = event["response"].get("usage") or {}
            details = usage.get("input_tokens_details") or {}
            return usage.get("input_tokens") or 0, details.get("cached_tokens") or 0
    return 0, 0


def chat_usage(events: list[dict[str, Any]]) -> tuple[int, int]:
    """llama-server's own numbers: ``timings`` (prompt_n re-read, cache_n from the cache),
    else the usage chunk."""
    for event in reversed(events):
        timings = event.get("timings")
        if timings and "prompt_n" in timings:
            cached = timings.get("cache_n") or 0
            return timings["prompt_n"] + cached, cached
    for event in reversed(events):
        usage = event.get("usage")
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            return usage.get("prompt_tokens") or 0, details.get("cached_tokens") or 0
    return 0, 0


def first_token(event: dict[str, Any]) -> bool:
    """Whether an event of any of the three protocols carries the reply's first output."""
    kind = event.get("type")
    if kind in ("content_block_delta", "response.output_text.delta"):
        return True
    if kind == "content_block_start":
        return (event.get("content_block") or {}).get("type") == "tool_use"
    if kind == "response.output_item.added":
        return (event.get("item") or {}).get("type") == "function_call"
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls"):
            return True
    return False


@dataclass(frozen=True)
class Protocol:
    path: str
    usage: Callable[[list[dict[str, Any]]], tuple[int, int]]


PROTOCOLS = {
    "/v1/messages": Protocol("/v1/messages", anthropic_usage),
    "/v1/responses": Protocol("/v1/responses", responses_usage),
    "/v1/chat/completions": Protocol("/v1/chat/completions", chat_usage),
}


# ---------------------------------------------------------------- bodies


def unpack(session: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded bodies, rebuilt from bench/record_sessions.py's ``pack``."""
    common = session.get("common") or {}
    bodies = []
    for order, turn in zip(session["key_order"], session["turns"], strict=True):
        merged = {**common, **turn}
        bodies.append({key: merged[key] for key in order})
    return bodies


def load_session(path: Path) -> dict[str, Any]:
    session: dict[str, Any] = json.loads(path.read_text())
    return {**session, "turns": unpack(session)}


def through_turnout(body: dict[str, Any], ingress: str, max_tokens: int) -> dict[str, Any]:
    """The recorded body for role ``a``, streamed, with a short reply."""
    out = {**body, "model": "a", "stream": True}
    if ingress == "/v1/responses":
        out["max_output_tokens"] = max_tokens
    else:
        out["max_tokens"] = max_tokens
        out.pop("thinking", None)  # a tiny model has nothing to think with
    return out


def direct_chat(body: dict[str, Any], ingress: str, max_tokens: int) -> dict[str, Any]:
    """What turnout's translation makes of the body: the engine's chat request."""
    body = through_turnout(body, ingress, max_tokens)
    raw = msgspec.json.encode(body)
    if ingress == "/v1/messages":
        from gateway.translate import anthropic

        fields = anthropic.prepare(raw, {}).request.fields
    else:
        from gateway.translate import responses

        fields = responses.prepare(raw, 0).request.fields
    chat = {k: msgspec.json.decode(bytes(v)) for k, v in fields.items()}
    chat["stream"] = True
    chat["stream_options"] = {"include_usage": True}
    chat.setdefault("max_tokens", max_tokens)
    return chat


# ---------------------------------------------------------------- the stacks


def role(binary: Path, model: Path) -> dict[str, Any]:
    command = [str(binary), "-m", "${MODEL}", "--host", "${HOST}", "--port", "${PORT}"]
    command += ["-c", "${CTX}", "--jinja", "--no-webui", "-a", "${ROLE}", "-np", "1", "-t", "2"]
    command += LONG_CONTEXT
    return {"engine": "llamacpp", "model": str(model), "command": command, "context": CTX}


class Gateway:
    """``turnout serve`` as a user runs it, with roles a and b."""

    def __init__(self, roles: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = tempfile.mkdtemp(prefix="turnout-agent-bench-")
        config = {
            "server": {"log_level": "warning", "database": f"{self.folder}/turnout.db"},
            "roles": roles,
            "engines": {"max_wait_seconds": 5, "wait_timeout_seconds": 120},
        }
        self.config = Path(self.folder, "routing.yaml")
        self.config.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gateway:
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        self.process = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(self.folder, "turnout.log"), "wb"),
        )
        import urllib.request

        for _ in range(400):
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"turnout did not start; see {self.folder}/turnout.log")

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(60)


async def stream(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], float, aiohttp.ClientResponse]:
    """Every JSON event of a streamed answer, and the seconds to its first output."""
    events: list[dict[str, Any]] = []
    ttft = 0.0
    started = time.perf_counter()
    async with http.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {(await response.text())[:300]}")
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            events.append(event)
            if not ttft and first_token(event):
                ttft = time.perf_counter() - started
    return events, ttft or time.perf_counter() - started, response


async def switch(http: aiohttp.ClientSession, url: str, name: str) -> float:
    started = time.perf_counter()
    async with http.post(f"{url}/engine/switch/{name}?wait=true") as response:
        answer = await response.json()
        if response.status != 200 or answer.get("status") != "ready":
            raise RuntimeError(f"switch to {name}: {response.status} {answer}")
    return time.perf_counter() - started


async def replay_turnout(
    http: aiohttp.ClientSession, gateway: str, name: str, session: dict[str, Any], max_tokens: int
) -> list[Turn]:
    ingress = session["ingress"]
    protocol = PROTOCOLS[ingress]
    turns: list[Turn] = []
    swap_after = len(session["turns"]) // 2 - 1
    await switch(http, gateway, "a")
    swap: float | None = None
    for i, body in enumerate(session["turns"]):
        events, ttft, _ = await stream(
            http, gateway + ingress, through_turnout(body, ingress, max_tokens)
        )
        prompt, cached = protocol.usage(events)
        turns.append(
            Turn("turnout", name, i + 1, prompt, cached, prompt - cached, ttft * 1e3, swap)
        )
        progress(turns[-1])
        swap = None
        if i == swap_after:
            swap = await switch(http, gateway, "b") + await switch(http, gateway, "a")
    return turns


async def replay_direct(
    http: aiohttp.ClientSession,
    engine: LlamaServer,
    name: str,
    session: dict[str, Any],
    max_tokens: int,
) -> list[Turn]:
    ingress = session["ingress"]
    turns: list[Turn] = []
    swap_after = len(session["turns"]) // 2 - 1
    swap: float | None = None
    for i, body in enumerate(session["turns"]):
        url = engine.url + "/v1/chat/completions"
        events, ttft, _ = await stream(http, url, direct_chat(body, ingress, max_tokens))
        prompt, cached = chat_usage(events)
        turns.append(Turn("direct", name, i + 1, prompt, cached, prompt - cached, ttft * 1e3, swap))
        progress(turns[-1])
        swap = None
        if i == swap_after:
            # Without turnout, a swap to another model and back is a stop and a cold start:
            # the slot's KV cache goes with the process.
            started = time.perf_counter()
            engine.stop()
            engine.start()
            swap = time.perf_counter() - started
    return turns


def progress(turn: Turn) -> None:
    print(
        f"  {turn.stack} {turn.session} turn {turn.turn}: {turn.cached_tokens}/"
        f"{turn.prompt_tokens} cached, ttft {turn.ttft_ms:.0f} ms",
        file=sys.stderr,
        flush=True,
    )


async def back_to_back(http: aiohttp.ClientSession, gateway: str, count: int) -> dict[str, Any]:
    before = await metrics(http, gateway)
    errors: list[str] = []
    extra_attempts = fallbacks = 0
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    started = time.perf_counter()
    for _ in range(count):
        try:
            async with http.post(gateway + "/v1/chat/completions", json=body) as response:
                text = await response.read()
                if response.status != 200 or b"[DONE]" not in text:
                    errors.append(f"{response.status}: {text[:120]!r}")
                attempts = int(response.headers.get("x-turnout-attempts", "1"))
                extra_attempts += max(0, attempts - 1)
                fallbacks += "x-turnout-fallback" in response.headers
        except aiohttp.ClientError as exc:
            errors.append(repr(exc))
    seconds = time.perf_counter() - started
    after = await metrics(http, gateway)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return {
        "requests": count,
        "client_errors": len(errors),
        "first_errors": errors[:3],
        "extra_attempts": extra_attempts,
        "fallbacks": fallbacks,
        "metric_fallbacks": delta.get("turnout_fallbacks_total", 0.0),
        "metric_reconnects": delta.get("turnout_upstream_reconnects_total", 0.0),
        "seconds": round(seconds, 2),
    }


async def metrics(http: aiohttp.ClientSession, gateway: str) -> dict[str, float]:
    """Prometheus counters summed over their labels (name -> total)."""
    async with http.get(gateway + "/metrics") as response:
        text = await response.text()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        totals[name.split("{")[0]] = totals.get(name.split("{")[0], 0.0) + float(value)
    return totals


# ---------------------------------------------------------------- report


def table(turns: list[Turn]) -> str:
    lines = [
        f"{'stack':8} {'session':8} {'turn':>4} {'prompt':>7} {'cached':>7} {'%':>5} "
        f"{'re-prefill':>10} {'ttft ms':>8} {'swap s':>7}"
    ]
    for t in turns:
        swap = f"{t.swap_s:7.2f}" if t.swap_s is not None else " " * 7
        lines.append(
            f"{t.stack:8} {t.session:8} {t.turn:>4} {t.prompt_tokens:>7} {t.cached_tokens:>7} "
            f"{100 * t.cached_share:>5.1f} {t.reprefilled_tokens:>10} {t.ttft_ms:>8.1f} {swap}"
        )
    return "\n".join(lines)


def verdicts(turns: list[Turn], cell: dict[str, Any]) -> list[str]:
    """The issue's targets, each with the measured value."""
    out = []
    for name in sorted({t.session for t in turns}):
        mine = [t for t in turns if t.stack == "turnout" and t.session == name]
        after_swap = [t for t in mine if t.swap_s is not None]
        steady = [t for t in mine[1:] if t.swap_s is None]
        if steady:
            low = min(t.cached_share for t in steady)
            out.append(f"{name}: cached from turn 2 on (no swap) >= 95%: min {100 * low:.1f}%")
        if after_swap:
            share = after_swap[0].cached_share
            out.append(
                f"{name}: cached on the first turn after the swap >= 90%: {100 * share:.1f}%"
            )
    out.append(
        f"{cell['requests']} back-to-back streams: {cell['client_errors']} client errors, "
        f"{cell['extra_attempts']} extra attempts, {cell['fallbacks']} fallbacks (target 0/0/0)"
    )
    return out


async def run(args: argparse.Namespace) -> tuple[list[Turn], dict[str, Any]]:
    binary = llama_server_binary()
    if binary is None:
        raise SystemExit("no llama-server: run tests/engines/build_llama_server.sh")
    models = ensure_models()
    names = args.sessions or (
        ["claude"] if args.quick else sorted(p.stem for p in SESSIONS.glob("*.json"))
    )
    sessions = {n: load_session(SESSIONS / f"{n}.json") for n in names}
    roles = {"a": role(binary, models[MODEL_A]), "b": role(binary, models[MODEL_B])}
    turns: list[Turn] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with Gateway(roles) as gateway:
            for name, session in sessions.items():
                turns += await replay_turnout(http, gateway.url, name, session, args.max_tokens)
            cell = await back_to_back(http, gateway.url, args.requests)
            print(f"  back-to-back: {cell}", file=sys.stderr, flush=True)
    # Straight to llama-server, a new connection per request: the server drops kept-alive
    # connections on its own (issue 12), which is turnout's problem to hide, not this replay's.
    direct = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=direct) as http:
        for name, session in sessions.items():
            engine = LlamaServer(
                models[MODEL_A], LONG_CONTEXT, binary=binary, ctx_size=CTX, parallel=1, alias="a"
            ).start()
            try:
                turns += await replay_direct(http, engine, name, session, args.max_tokens)
            finally:
                engine.stop()
    order = {"turnout": 0, "direct": 1}
    turns.sort(key=lambda t: (t.session, order[t.stack], t.turn))
    return turns, cell


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Claude Code only, 200 requests")
    parser.add_argument("--requests", type=int, default=None, help="back-to-back requests")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--sessions",
        nargs="+",
        help="recorded sessions to replay (default: all; claude with --quick)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 200 if args.quick else 1000
    turns, cell = asyncio.run(run(args))
    print(table(turns))
    print(f"\nback-to-back: {json.dumps(cell)}")
    for line in verdicts(turns, cell):
        print("  " + line)
    for stack in ("turnout", "direct"):
        ttfts = [t.ttft_ms for t in turns if t.stack == stack]
        if ttfts:
            print(f"  median ttft {stack}: {statistics.median(ttfts):.1f} ms")
    if args.json:
        result = {"turns": [asdict(t) for t in turns], "back_to_back": cell}
        args.json.write_text(json.dumps({**result, "verdicts": verdicts(turns, cell)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
