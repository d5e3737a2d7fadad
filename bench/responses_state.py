"""What stored Responses cost: store + replay of a 50-turn conversation vs the stateless path.

    .venv/bin/python -m bench.responses_state [--turns 50] [--iterations 2000] [--no-compact]

state    In this process, the Responses ingress's own work per request, timed around the
         same functions the pipeline calls (the Dialect's ``prepare``, then the exchange's
         ``reply`` on an upstream answer), in the same run:
           stateless  the whole 50-turn conversation in ``input``, ``store: false`` (Codex's way);
           stateful   only the new message plus ``previous_response_id`` of a stored 50-turn
                      chain, ``store: true``: replay from the cache and keeping the answer;
           cold       the same with the cache too small to hold anything: each turn read back
                      from SQLite (a conversation after a restart).
         The stored writer commits on its own task between iterations, as it does in the
         gateway (off the request path); its cost is not in these numbers.
compact  ``POST /v1/responses/compact`` through a real turnout onto a real llama-server role with
         the tiny test model (tests/engines): wall time per compaction of an 8-turn conversation
         (the model's 2048-token context holds no more).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgspec

from gateway.api.responses import StatefulResponses
from gateway.auth import Authenticator
from gateway.config.responses import Responses
from gateway.config.schema import Auth
from gateway.contract import WireProtocol
from gateway.keys import KeyCache
from gateway.pipeline.call import Exchange
from gateway.responses_store.store import ResponseStore
from gateway.state import GatewayState

SCOPE: dict[str, Any] = {
    "type": "http",
    "headers": [(b"host", b"127.0.0.1:8080")],
    "client": ("127.0.0.1", 50000),
}
ANSWER = msgspec.json.encode(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Done: edited src/app.py as asked."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 900, "completion_tokens": 9, "total_tokens": 909},
    }
)


def _user(n: int) -> str:
    return f"Turn {n}: please change line {n} of src/app.py so the tests pass; " * 3


def _assistant(n: int) -> str:
    return f"Done with turn {n}: edited src/app.py line {n} and ran the tests, all green. " * 3


def _conversation(turns: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for n in range(turns):
        items.append({"role": "user", "content": _user(n)})
        items.append(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": _assistant(n)}],
            }
        )
    return items


def _responses(store: ResponseStore) -> StatefulResponses:
    auth = Authenticator(Auth(), KeyCache(":memory:"))
    state = SimpleNamespace(
        responses=store, auth=auth, config=SimpleNamespace(responses=Responses())
    )
    return StatefulResponses(cast(GatewayState, state))


def _one(responses: StatefulResponses, body: bytes) -> Exchange:
    exchange = responses.prepare(body, SCOPE)
    exchange.reply(ANSWER, WireProtocol.OPENAI)
    return exchange


async def _chain(responses: StatefulResponses, turns: int) -> str:
    """A stored conversation of ``turns`` turns, built turn by turn as a client would."""
    previous: str | None = None
    for n in range(turns):
        body: dict[str, Any] = {"model": "m", "input": _user(n)}
        if previous:
            body["previous_response_id"] = previous
        exchange = responses.prepare(msgspec.json.encode(body), SCOPE)
        answer, _ = exchange.reply(ANSWER, WireProtocol.OPENAI)
        previous = msgspec.json.decode(answer)["id"]
        await asyncio.sleep(0)
    assert previous is not None
    return previous


async def _timed(run: Any, iterations: int) -> list[float]:
    times: list[float] = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        # Lets the store's writer task commit, as between requests in the gateway.
        await asyncio.sleep(0)
    return times


async def state_bench(turns: int, iterations: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="turnout-bench-"))
    warm = ResponseStore(Responses(), str(folder / "warm.db"))
    cold = ResponseStore(Responses(cache_bytes=1), str(folder / "warm.db"))
    await warm.start()
    await cold.start()
    try:
        hot, chilled = _responses(warm), _responses(cold)
        last = await _chain(hot, turns)
        for _ in range(100):  # let the writer commit the chain for the cold store to read
            if not warm._pending:
                break
            await asyncio.sleep(0.05)
        stateless = msgspec.json.encode(
            {
                "model": "m",
                "store": False,
                "input": [*_conversation(turns), {"role": "user", "content": "next"}],
            }
        )
        stateful = msgspec.json.encode(
            {"model": "m", "input": "next", "previous_response_id": last}
        )
        results: dict[str, list[float]] = {"stateless": [], "stateful": [], "cold": []}
        # Interleaved rounds, so drift on a noisy machine lands on every variant alike.
        for _ in range(5):
            results["stateless"] += await _timed(lambda: _one(hot, stateless), iterations // 5)
            results["stateful"] += await _timed(lambda: _one(hot, stateful), iterations // 5)
            results["cold"] += await _timed(lambda: _one(chilled, stateful), iterations // 50)
        p50 = {name: statistics.median(times) * 1000 for name, times in results.items()}
        p50["added_ms"] = p50["stateful"] - p50["stateless"]
        p50["bodies_kb"] = len(stateless) / 1024
        return p50
    finally:
        await warm.stop()
        await cold.stop()


async def compact_bench(turns: int, runs: int) -> dict[str, float] | None:
    from tests.engines.engines import LlamaServer, ensure_models, llama_server_binary
    from tests.gateway_server import config_of, running_gateway

    if llama_server_binary() is None:
        print("compact: no llama-server binary here; skipped")
        return None
    models = ensure_models()
    with LlamaServer(models["tiny-hello"], alias="tiny-hello") as server:
        raw = {
            "providers": {"tiny": {"kind": "llamacpp", "base_url": server.url + "/v1"}},
            "models": [{"name": "tiny", "targets": [{"provider": "tiny", "model": "tiny-hello"}]}],
            "responses": {"summariser": "tiny"},
        }
        async with running_gateway(config_of(raw)) as gw:
            client = gw.openai()
            conversation = _conversation(turns)
            times: list[float] = []
            for _ in range(runs):
                start = time.perf_counter()
                await client.responses.compact(
                    model="tiny",
                    input=conversation,  # type: ignore[arg-type]
                    extra_body={"max_output_tokens": 32},
                )
                times.append(time.perf_counter() - start)
    return {"compact_p50_ms": statistics.median(times) * 1000, "runs": runs}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--compact-runs", type=int, default=5)
    # The tiny test model has a 2048-token context: 50 turns do not fit it.
    parser.add_argument("--compact-turns", type=int, default=8)
    parser.add_argument("--no-compact", action="store_true")
    args = parser.parse_args()
    state = await state_bench(args.turns, args.iterations)
    print(
        f"state ({args.turns} turns, {state['bodies_kb']:.0f} KB stateless body): p50 "
        f"stateless {state['stateless']:.3f} ms, stateful {state['stateful']:.3f} ms "
        f"(added {state['added_ms']:+.3f} ms), cold from SQLite {state['cold']:.3f} ms"
    )
    if not args.no_compact:
        compact = await compact_bench(args.compact_turns, args.compact_runs)
        if compact is not None:
            print(
                f"compact ({args.compact_turns} turns, tiny llama-server): p50 "
                f"{compact['compact_p50_ms']:.1f} ms over {compact['runs']} runs"
            )


if __name__ == "__main__":
    asyncio.run(main())
