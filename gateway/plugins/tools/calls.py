"""One tool call, the same for the API and the agent loop: find, permit, validate, run, check.

Every refusal happens before the tool runs. Whatever a tool does wrong (raises, hangs, answers
outside its output schema) comes back as an ``Outcome`` with ``ok: false``, never as an
exception, so one bad tool cannot break the request that called it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from gateway.errors import ToolFailed
from gateway.plugins.tools.metrics import ToolMetrics
from gateway.plugins.tools.registry import Caller, Entry, ToolRegistry, may_call

log = logging.getLogger("turnout.tools")

Code = Literal[
    "not_found",
    "permission_denied",
    "invalid_arguments",
    "timeout",
    "tool_error",
    "invalid_output",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """Seed 004's ToolCallResult ({ok, result, error}) plus a machine-readable code."""

    ok: bool
    result: Any = None
    error: str | None = None
    code: Code | None = None
    seconds: float = 0.0
    # Invalid arguments: where in them the first problem is (".city", "" for the whole), for
    # the API's 400 to name the field as every other 400 does.
    where: str | None = None

    @classmethod
    def failed(
        cls, code: Code, error: str, seconds: float = 0.0, where: str | None = None
    ) -> Outcome:
        return cls(ok=False, error=error, code=code, seconds=seconds, where=where)


async def call_tool(
    registry: ToolRegistry,
    name: str,
    arguments: Any,
    caller: Caller,
    metrics: ToolMetrics | None = None,
) -> Outcome:
    """Call a tool by id (or function name) for ``caller``."""
    entry = registry.get(name)
    if entry is None:
        outcome = Outcome.failed("not_found", f"no tool named {name!r}")
        # Not the name asked for: callers would choose the metric's label values.
        _count(metrics, "(unknown)", outcome)
        return outcome
    return await run_entry(entry, arguments, caller, metrics)


async def run_entry(
    entry: Entry, arguments: Any, caller: Caller, metrics: ToolMetrics | None = None
) -> Outcome:
    spec = entry.spec
    outcome = _refusal(entry, arguments, caller)
    if outcome is None:
        outcome = await _run(entry, arguments, caller)
        if metrics is not None:
            metrics.duration.labels(spec.executor).observe(outcome.seconds)
    if not outcome.ok:
        log.info(
            "tool %s for agent %s (request %s): %s: %s",
            spec.id,
            caller.agent_id,
            caller.request_id or "-",
            outcome.code,
            outcome.error,
        )
    _count(metrics, spec.id, outcome)
    return outcome


def _refusal(entry: Entry, arguments: Any, caller: Caller) -> Outcome | None:
    spec = entry.spec
    if not may_call(spec, caller.agent_id, caller.is_admin):
        return Outcome.failed(
            "permission_denied", f"agent {caller.agent_id!r} may not use tool {spec.id!r}"
        )
    if not isinstance(arguments, dict):
        return Outcome.failed("invalid_arguments", "arguments must be a JSON object", where="")
    problems = entry.arguments.problems(arguments)
    if problems:
        listed = "; ".join(problem.text for problem in problems)
        return Outcome.failed(
            "invalid_arguments",
            f"arguments do not match the tool's input_schema: {listed}",
            where=problems[0].field,
        )
    return None


async def _run(entry: Entry, arguments: dict[str, Any], caller: Caller) -> Outcome:
    spec = entry.spec
    started = time.perf_counter()
    try:
        async with asyncio.timeout(spec.timeout):
            result = await entry.tool.run(arguments, caller)
    except TimeoutError:
        return Outcome.failed(
            "timeout", f"tool {spec.id!r} timed out after {spec.timeout:g}s", _since(started)
        )
    except ToolFailed as exc:
        return Outcome.failed("tool_error", str(exc), _since(started))
    except Exception as exc:
        log.exception("tool %s raised", spec.id)
        return Outcome.failed(
            "tool_error", f"tool {spec.id!r} raised {type(exc).__name__}: {exc}", _since(started)
        )
    seconds = _since(started)
    try:
        # Plain JSON values from here on: the API encodes them, schemas check them.
        result = msgspec.to_builtins(result)
    except (TypeError, msgspec.EncodeError) as exc:
        return Outcome.failed(
            "invalid_output", f"tool {spec.id!r} answered something not JSON: {exc}", seconds
        )
    if entry.output is not None:
        problems = entry.output.errors(result)
        if problems:
            return Outcome.failed(
                "invalid_output",
                f"tool {spec.id!r} answered outside its output_schema: {'; '.join(problems)}",
                seconds,
            )
    return Outcome(ok=True, result=result, seconds=seconds)


def _since(started: float) -> float:
    return time.perf_counter() - started


def _count(metrics: ToolMetrics | None, tool: str, outcome: Outcome) -> None:
    if metrics is not None:
        metrics.calls.labels(tool, "ok" if outcome.ok else outcome.code or "error").inc()
