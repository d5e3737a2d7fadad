"""The server-side agent loop (seed 002): turnout runs the tools, the model only asks for them.

Per request with a plan (``plan.py``): call the model with the client's tools plus the
server-side tool schemas; run the server-side tool calls it makes (concurrently, each with
its permission, schema and timeout checks); append the results; repeat up to
``max_tool_rounds``. Then one last call with ``tool_choice: "none"`` and a final instruction
forces an answer, so at most ``max_tool_rounds + 1`` model calls are made.

A call to one of the client's own tools ends the loop at once: that reply goes back to the
client with just its calls, as it would without turnout (server-side calls the model made in
the same breath are dropped, not run: their results could not reach the model anyway).

The ingress meets the loop as an ``AgentForwarder``, shaped like the gateway's ``Forwarder``
and wrapping it (the tools plugin's ``forwarder_for`` hook): it sends the request as always
and gets the final answer back, whole or as a stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import msgspec

from adapters.base import Operation, UpstreamReply
from gateway.config.upstreams import Model
from gateway.forwarder import OpenStream, Trace
from gateway.identity import Identity
from gateway.plugins.tools.calls import Outcome, run_entry
from gateway.plugins.tools.metrics import ToolMetrics
from gateway.plugins.tools.plan import AgentPlan, plan_agent
from gateway.plugins.tools.registry import Caller, ToolRegistry
from gateway.plugins.tools.replies import (
    Message,
    ToolCall,
    UsageTotal,
    as_events,
    final_body,
    read_reply,
)
from gateway.plugins.tools.settings import AgentLoop
from gateway.wire import ClientRequest

log = logging.getLogger("turnout.agent")

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder()
_decode_messages = msgspec.json.Decoder(list[msgspec.Raw])
_NONE = msgspec.Raw(b'"none"')
# Fields the loop sets per round, or that must not reach the model.
_REPLACED = frozenset({"messages", "tools", "tool_choice", "stream", "stream_options", "turnout"})


class Sender(Protocol):
    """What the loop needs of the gateway's Forwarder: one whole reply, with fallback."""

    async def send(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> UpstreamReply: ...


async def run_agent_loop(
    sender: Sender,
    settings: AgentLoop,
    plan: AgentPlan,
    model: Model,
    request: ClientRequest,
    caller: Caller,
    trace: Trace,
    metrics: ToolMetrics | None = None,
) -> bytes:
    """The loop's final answer: an OpenAI chat.completion body with the ``turnout`` extension."""
    started = time.perf_counter()
    loop = _Loop(sender, settings, plan, model, request, caller, trace, metrics)
    body = await loop.run()
    log.info(
        "agent loop for request %s: %d model calls in %.3fs",
        caller.request_id,
        loop.calls,
        time.perf_counter() - started,
    )
    return body


class _Loop:
    """One request's loop: the conversation so far, and what it cost."""

    def __init__(
        self,
        sender: Sender,
        settings: AgentLoop,
        plan: AgentPlan,
        model: Model,
        request: ClientRequest,
        caller: Caller,
        trace: Trace,
        metrics: ToolMetrics | None,
    ) -> None:
        self._sender = sender
        self._settings = settings
        self._plan = plan
        self._model = model
        self._request = request
        self._caller = caller
        self._trace = trace
        self._metrics = metrics
        fields = request.fields
        self._base = {k: v for k, v in fields.items() if k not in _REPLACED}
        # Kept encoded: each round sends them all again, and only new ones need encoding.
        self._messages: list[bytes] = [
            bytes(m) for m in _decode_messages.decode(fields["messages"])
        ]
        schemas = [*map(bytes, plan.client), *(e.openai for e in plan.server.values())]
        self._tools = msgspec.Raw(b"[" + b",".join(schemas) + b"]")
        self._client_names = _names(plan.client)
        self._usage = UsageTotal()
        self._results: list[dict[str, Any]] = []
        self._steps: list[dict[str, Any]] = []
        self._rounds = 0
        # Model calls made (the trace's attempts count fail-overs instead: see _merge).
        self.calls = 0

    async def run(self) -> bytes:
        plan = self._plan
        for number in range(plan.max_rounds):
            choice = plan.tool_choice if number == 0 else None
            body, message = await self._ask("tools", choice)
            calls = message.tool_calls or []
            if not calls:
                return self._answer(body)
            theirs = frozenset(_name(c) for c in calls if _name(c) in self._client_names)
            if theirs:
                self._step(phase="client_tools", calls=sorted(theirs))
                return self._answer(body, keep_calls=theirs)
            await self._run_tools(message, calls)
            self._rounds += 1
        body, _ = await self._ask("final", _NONE, final=True)
        return self._answer(body, keep_calls=frozenset())

    # --- the model --------------------------------------------------------------------------

    async def _ask(
        self, kind: str, tool_choice: msgspec.Raw | None, final: bool = False
    ) -> tuple[bytes, Message]:
        messages = self._messages
        if final:
            instruction = {
                "role": self._settings.final_instruction_role,
                "content": self._settings.final_instruction,
            }
            messages = [*messages, _encode(instruction)]
        fields = dict(self._base)
        fields["messages"] = msgspec.Raw(b"[" + b",".join(messages) + b"]")
        fields["tools"] = self._tools
        if tool_choice is not None:
            fields["tool_choice"] = tool_choice
        upstream = ClientRequest(Operation.CHAT, self._request.model, False, False, fields)
        # A Trace per call: the forwarder releases each call's target and engine lease itself.
        attempt = Trace()
        self.calls += 1
        try:
            reply = await self._sender.send(self._model, upstream, self._caller.request_id, attempt)
        finally:
            _merge(self._trace, attempt)
        message, usage = read_reply(reply.body)
        self._usage.add(usage)
        if self._metrics is not None:
            self._metrics.agent_rounds.labels(kind).inc()
        self._step(
            phase=kind,
            round=self._rounds,
            tool_calls=len(message.tool_calls or ()),
            seconds=round(attempt.upstream_seconds, 6),
        )
        return reply.body, message

    def _answer(self, body: bytes, keep_calls: frozenset[str] | None = None) -> bytes:
        extension: dict[str, Any] = {"tool_rounds": self._rounds, "tool_results": self._results}
        if self._plan.debug:
            extension["trace"] = self._steps
        return final_body(body, self._usage, extension, keep_calls)

    # --- the tools --------------------------------------------------------------------------

    async def _run_tools(self, message: Message, calls: list[ToolCall]) -> None:
        named = [
            (call.id or f"call_{self._rounds}_{i}", _name(call), _arguments_text(call))
            for i, call in enumerate(calls)
        ]
        assistant = {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in named
            ],
        }
        self._messages.append(_encode(assistant))
        outcomes = await asyncio.gather(*(self._call(name, text) for _, name, text in named))
        limit = self._settings.max_result_chars
        for (call_id, name, _), (arguments, outcome) in zip(named, outcomes, strict=True):
            content = _content(outcome)
            if len(content) > limit:
                content = content[:limit] + " [cut by turnout]"
            tool = {"role": "tool", "tool_call_id": call_id, "content": content}
            self._messages.append(_encode(tool))
            entry = self._plan.server.get(name)
            self._results.append(
                {
                    "id": call_id,
                    "tool": entry.spec.id if entry is not None else name,
                    "arguments": arguments,
                    "ok": outcome.ok,
                    "result": outcome.result,
                    "error": outcome.error,
                    "code": outcome.code,
                }
            )
            self._step(
                phase="tool",
                round=self._rounds,
                tool=name,
                ok=outcome.ok,
                seconds=round(outcome.seconds, 6),
            )
        # Concurrent calls: the round waited as long as the slowest. Time spent in tools is
        # not the gateway's own overhead, so it is booked with the upstream time.
        self._trace.upstream_seconds += max((o.seconds for _, o in outcomes), default=0.0)

    async def _call(self, name: str, text: str) -> tuple[Any, Outcome]:
        try:
            arguments = _decode_any.decode(text) if text.strip() else {}
        except msgspec.DecodeError as exc:
            return text, Outcome.failed("invalid_arguments", f"arguments are not JSON: {exc}")
        entry = self._plan.server.get(name)
        if entry is None:
            return arguments, Outcome.failed("not_found", f"no tool named {name!r} is available")
        return arguments, await run_entry(entry, arguments, self._caller, self._metrics)

    def _step(self, **step: Any) -> None:
        if self._plan.debug:
            self._steps.append(step)
        log.debug("agent loop %s: %s", self._caller.request_id, step)


def _name(call: ToolCall) -> str:
    return call.function.name if call.function is not None else ""


def _arguments_text(call: ToolCall) -> str:
    arguments = call.function.arguments if call.function is not None else None
    if arguments is None:
        return "{}"
    return arguments if isinstance(arguments, str) else _encode(arguments).decode()


def _content(outcome: Outcome) -> str:
    if not outcome.ok:
        return _encode({"error": outcome.error, "code": outcome.code}).decode()
    result = outcome.result
    return result if isinstance(result, str) else _encode(result).decode()


class _FunctionName(msgspec.Struct):
    name: str = ""


class _Definition(msgspec.Struct):
    function: _FunctionName | None = None


_decode_definition = msgspec.json.Decoder(_Definition)


def _names(definitions: tuple[msgspec.Raw, ...]) -> frozenset[str]:
    names: set[str] = set()
    for raw in definitions:
        try:
            function = _decode_definition.decode(raw).function
        except msgspec.DecodeError:
            continue
        if function is not None and function.name:
            names.add(function.name)
    return frozenset(names)


def _merge(total: Trace, attempt: Trace) -> None:
    # The client gets one answer: its attempts (x-turnout-attempts) are the first try plus
    # every fail-over in any round. Each round's first call is the loop working, not a retry.
    if attempt.attempts:
        total.attempts = max(total.attempts, 1) + attempt.attempts - 1
    total.upstream_seconds += attempt.upstream_seconds
    total.failures.extend(attempt.failures)
    if attempt.target is not None:
        total.target = attempt.target
    if attempt.lease is not None:
        total.lease = attempt.lease


# --- the ingress's side ---------------------------------------------------------------------


class AgentForwarder:
    """Stands in for the gateway's forwarder for one request that has an agent plan."""

    def __init__(
        self,
        sender: Sender,
        settings: AgentLoop,
        metrics: ToolMetrics | None,
        plan: AgentPlan,
        caller: Caller,
    ) -> None:
        self._sender = sender
        self._settings = settings
        self._metrics = metrics
        self._plan = plan
        self._caller = caller

    async def send(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> UpstreamReply:
        body = await run_agent_loop(
            self._sender,
            self._settings,
            self._plan,
            model,
            request,
            self._caller,
            trace,
            self._metrics,
        )
        return UpstreamReply(200, body)

    async def open_stream(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> OpenStream:
        """The loop runs whole (keep-alives go out meanwhile), then its answer is streamed."""
        reply = await self.send(model, request, request_id, trace)
        events = as_events(reply.body)
        replay = _Replay(events[1:])
        # No release: every model call gave back its own target and lease.
        return OpenStream(replay, replay, events[0])


class _Replay:
    """Events already in hand, as the UpstreamStream an OpenStream expects."""

    def __init__(self, events: list[bytes]) -> None:
        self._events = iter(events)

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        return None


def agent_forwarder(
    forwarder: Sender,
    tools: ToolRegistry,
    settings: AgentLoop,
    identity: Identity,
    request_id: str,
    model: Model,
    request: ClientRequest,
) -> AgentForwarder | None:
    """An AgentForwarder wrapping ``forwarder`` when turnout runs tools for this request
    (the tools plugin's ``forwarder_for``)."""
    if request.op is not Operation.CHAT:
        return None
    plan = plan_agent(tools, settings, model.name, request.fields, identity)
    if plan is None:
        return None
    return AgentForwarder(forwarder, settings, tools.metrics, plan, Caller.of(identity, request_id))
