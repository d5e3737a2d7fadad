"""Agent-loop overhead per round, model and tool time excluded (issue #6 target: <= 2 ms).

    .venv/bin/python -m bench.agent_loop [--loops 300] [--rounds 4] [--no-e2e]

Every loop makes ``rounds`` tool rounds (the model calls the tool each time) and then the
forced final call, so ``rounds + 1`` model calls; the overhead per round is the loop's wall
time less the time spent in the model and in the tool, divided by the model calls.

micro  The loop in this process against an in-process model that answers at once (the
       upstream body is still encoded, as an adapter would, and counted as overhead), with
       an async python tool that returns a ~1 KB result. For a small request (one server
       tool) and a Claude Code-sized one (8 KB system prompt, 20 client tools of its own).
e2e    The same loop through turnout's real state: its Forwarder, the openai adapter and
       the fake OpenAI upstream on loopback (in its own thread). Model time is what the
       forwarder booked as upstream time; what is left is the loop plus the forwarder's own
       per-call work.

Results go to bench/results/agent_loop-<time>.json and agent_loop-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from adapters.base import Operation, UpstreamReply
from adapters.builtin import default_registry
from gateway.config import Config, Model, from_mapping
from gateway.forwarder import Trace
from gateway.identity import Identity
from gateway.plugins.tools.agent import run_agent_loop
from gateway.plugins.tools.plan import plan_agent
from gateway.plugins.tools.python import python_tool
from gateway.plugins.tools.registry import Caller, ToolRegistry
from gateway.plugins.tools.settings import AgentLoop, ToolDefinition
from gateway.state import GatewayState, Wiring
from gateway.wire import ClientRequest, decode_request

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 2.0
AGENT = Identity(key_id=None, agent_id="bench")
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
_SYSTEM = "You are a careful assistant. Use the tools when they help; cite what they return. "


async def lookup(city: str) -> dict[str, Any]:
    """The benchmark's tool: instant, with a result the size of a small search hit list."""
    return {"city": city, "temperature_c": 21, "notes": ["sunny spells, light wind"] * 30}


def request_body(system_bytes: int, client_tools: int) -> dict[str, Any]:
    system = (_SYSTEM * (system_bytes // len(_SYSTEM) + 1))[:system_bytes]
    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {
                "name": f"client_tool_{i}",
                "description": f"A tool the client runs itself ({i}).",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File to act on."},
                        "content": {"type": "string", "description": "Text to write."},
                    },
                    "required": ["path"],
                },
            },
        }
        for i in range(client_tools)
    ]
    tools.append({"type": "function", "function": {"name": "lookup"}})
    return {
        "model": "bench",
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "What is the weather in Paris, and should I cycle?"},
        ],
        "tools": tools,
    }


def reply(tool_call: bool) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": "Cycle: it is mild and dry."}
    finish = "stop"
    if tool_call:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"city":"Paris"}'},
                }
            ],
        }
        finish = "tool_calls"
    return msgspec.json.encode(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": "bench",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 20, "total_tokens": 920},
        }
    )


class InstantModel:
    """Answers at once: a tool call until tool_choice is "none", then the final answer."""

    def __init__(self) -> None:
        self._tool = reply(tool_call=True)
        self._final = reply(tool_call=False)

    async def send(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> UpstreamReply:
        # What an adapter does with every call: the whole body, encoded (counted as overhead).
        msgspec.json.encode(request.fields)
        final = bytes(request.fields.get("tool_choice") or b"") == b'"none"'
        return UpstreamReply(200, self._final if final else self._tool)


def tool_registry() -> ToolRegistry:
    registry = ToolRegistry()
    definition = ToolDefinition(
        id="lookup", executor="python", target="bench.agent_loop:lookup", input_schema=CITY
    )
    registry.add(python_tool(definition))
    return registry


def _check(answer: bytes, rounds: int) -> None:
    """The loop did what is being timed: every round ran the tool."""
    results = json.loads(answer)["turnout"]["tool_results"]
    assert len(results) == rounds and all(r["ok"] for r in results), results


def summary(per_round_ms: list[float]) -> dict[str, float]:
    ordered = sorted(per_round_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 4),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
    }


async def micro(loops: int, rounds: int, system_bytes: int, client_tools: int) -> dict[str, Any]:
    registry = tool_registry()
    settings = AgentLoop(max_tool_rounds=rounds)
    model = Model(name="bench", targets=())
    body = msgspec.json.encode(request_body(system_bytes, client_tools))
    sender = InstantModel()
    samples: list[float] = []
    for i in range(loops + 20):
        started = time.perf_counter()
        request = decode_request(Operation.CHAT, body)
        plan = plan_agent(registry, settings, "bench", request.fields, AGENT)
        assert plan is not None
        trace = Trace()
        answer = await run_agent_loop(
            sender, settings, plan, model, request, Caller("bench", request_id="b"), trace
        )
        wall = time.perf_counter() - started
        if i == 0:
            _check(answer, rounds)
        if i >= 20:  # warm-up
            samples.append((wall - trace.upstream_seconds) * 1000 / (rounds + 1))
    return {"request_bytes": len(body), "client_tools": client_tools, **summary(samples)}


def e2e_config(upstream: str, rounds: int, database: str) -> Config:
    return from_mapping(
        {
            "server": {"database": database},
            "providers": {"up": {"kind": "openai", "base_url": upstream, "local": True}},
            "models": [{"name": "bench", "targets": [{"provider": "up", "model": "tools"}]}],
            "usage": {"enabled": False},
            "plugins": {"enabled": ["tools"]},
            "tools": {
                "registry": [
                    {
                        "id": "lookup",
                        "executor": "python",
                        "target": "bench.agent_loop:lookup",
                        "input_schema": CITY,
                    }
                ],
                "agent": {"max_tool_rounds": rounds},
            },
        },
        "bench",
        {},
    )


async def e2e(loops: int, rounds: int, system_bytes: int, client_tools: int) -> dict[str, Any]:
    from tests.fakes.openai_upstream import FakeOpenAI

    body = request_body(system_bytes, client_tools)
    with FakeOpenAI() as fake, tempfile.TemporaryDirectory() as scratch:
        # The fake answers "tools" with a call of the request's first tool: make it ours.
        fake.tool_calls = [("lookup", '{"city":"Paris"}')]
        config = e2e_config(fake.url, rounds, f"{scratch}/t.db")
        state = await GatewayState.open(Wiring.of(config, default_registry()))
        try:
            model = state.models.resolve("bench")
            assert model is not None
            encoded = msgspec.json.encode(body)
            samples: list[float] = []
            for i in range(loops + 20):
                started = time.perf_counter()
                request = decode_request(Operation.CHAT, encoded)
                forwarder = state.plugins.forwarder_for(state.forwarder, AGENT, "b", model, request)
                assert forwarder is not None
                trace = Trace()
                answer = await forwarder.send(model, request, "b", trace)
                wall = time.perf_counter() - started
                if i == 0:
                    _check(answer.body, rounds)
                    assert trace.attempts == rounds + 1
                if i >= 20:
                    samples.append((wall - trace.upstream_seconds) * 1000 / (rounds + 1))
        finally:
            await state.close()
    return {"client_tools": client_tools, **summary(samples)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    shapes = {"small": (600, 0), "claude_code": (8000, 20)}
    results: dict[str, Any] = {
        "rounds": args.rounds,
        "target_ms": TARGET_MS,
        "micro": {},
        "e2e": {},
    }
    for name, (system_bytes, tools) in shapes.items():
        results["micro"][name] = await micro(args.loops, args.rounds, system_bytes, tools)
        if not args.no_e2e:
            results["e2e"][name] = await e2e(args.loops, args.rounds, system_bytes, tools)
    worst = max(r["p95_ms"] for part in ("micro", "e2e") for r in results[part].values())
    results["worst_p95_ms"] = worst
    results["pass"] = worst <= TARGET_MS
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loops", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-e2e", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop

        results = uvloop.run(run(args))
    except ImportError:
        results = asyncio.run(run(args))
    text = json.dumps(results, indent=2)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"agent_loop-{stamp}.json").write_text(text + "\n")
    (out / "agent_loop-latest.json").write_text(text + "\n")
    verdict = "within" if results["pass"] else "OVER"
    print(f"worst p95 per round: {results['worst_p95_ms']:.3f} ms ({verdict} {TARGET_MS} ms)")


if __name__ == "__main__":
    main()
