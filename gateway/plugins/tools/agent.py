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
and gets the final answer back, whole or as a stream. For a stream every round is asked for
as one, and the client gets the model's text as it is written (``rounds.py``): the answer of
the last round chunk by chunk, not once the loop is over; the rounds that call tools are read
by the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Protocol

import msgspec

from adapters.base import Operation, UpstreamReply
from gateway.config.upstreams import Model
from gateway.forwarder import OpenStream, Trace
from gateway.identity import Identity
from gateway.plugins.context import Forwarding
from gateway.plugins.tools.calls import Outcome, run_entry
from gateway.plugins.tools.metrics import ToolMetrics
from gateway.plugins.tools.plan import AgentPlan, plan_agent
from gateway.plugins.tools.registry import Caller, ToolRegistry
from gateway.plugins.tools.replies import Message, ToolCall, UsageTotal, final_body, read_reply
from gateway.plugins.tools.rounds import StreamedRound, closing_events
from gateway.plugins.tools.settings import AgentLoop
from gateway.wire import ClientRequest

log = logging.getLogger("turnout.agent")

_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder()
_decode_messages = msgspec.json.Decoder(list[msgspec.Raw])
_NONE = msgspec.Raw(b'"none"')
_TRUE = msgspec.Raw(b"true")
# Fields the loop sets per round, or that must not reach the model.
_REPLACED = frozenset({"messages", "tools", "tool_choice", "stream", "stream_options", "turnout"})


class Sender(Protocol):
    """What the loop needs of the gateway's Forwarder: one whole reply, with fallback (a
    stream too, for a client that streams: then it is a ``Forwarding``)."""

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
        # Streaming: set once the client has had an event. From then on the relay books the
        # time it waits on this loop as upstream time itself, so the loop must not book it too.
        self._relayed = False

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

    async def events(self, streams: Forwarding) -> AsyncGenerator[bytes, None]:
        """The loop for a client that streams: what it gets, as the rounds are read."""
        plan = self._plan
        shown = False
        for number in range(plan.max_rounds + 1):
            final = number == plan.max_rounds
            choice = _NONE if final else plan.tool_choice if number == 0 else None
            current = StreamedRound(separate=shown)
            kind = "final" if final else "tools"
            # Closed at once when the client goes (this generator closed at a yield): its
            # upstream request must not wait for the garbage collector to be cancelled.
            async with aclosing(self._stream_round(streams, kind, choice, current)) as relayed:
                async for event in relayed:
                    self._relayed = True
                    yield event
            shown = shown or current.showing
            calls = [] if final else current.tool_calls()
            theirs = frozenset(_name(c) for c in calls if _name(c) in self._client_names)
            if theirs or not calls:
                if theirs:
                    self._step(phase="client_tools", calls=sorted(theirs))
                kept = [c for c in calls if _name(c) in theirs]
                usage = self._usage.as_dict()
                for event in closing_events(current, kept, usage, self._extension(), shown):
                    self._relayed = True
                    yield event
                return
            await self._run_tools(current.message(), calls)
            self._rounds += 1

    # --- the model --------------------------------------------------------------------------

    def _upstream(
        self, tool_choice: msgspec.Raw | None, final: bool, stream: bool
    ) -> ClientRequest:
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
        if stream:
            # The adapter adds stream_options.include_usage: every round's tokens are counted.
            fields["stream"] = _TRUE
        return ClientRequest(Operation.CHAT, self._request.model, stream, stream, fields)

    async def _ask(
        self, kind: str, tool_choice: msgspec.Raw | None, final: bool = False
    ) -> tuple[bytes, Message]:
        upstream = self._upstream(tool_choice, final, stream=False)
        # A Trace per call: the forwarder releases each call's target and engine lease itself.
        attempt = Trace()
        self.calls += 1
        began = time.perf_counter()
        try:
            reply = await self._sender.send(self._model, upstream, self._caller.request_id, attempt)
        finally:
            _merge(self._trace, attempt)
            # A span of its own in traces (gateway/telemetry/spans.py): the round's model call.
            self._trace.add_phase(f"agent round {self._rounds} {kind}", began)
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

    async def _stream_round(
        self,
        streams: Forwarding,
        kind: str,
        tool_choice: msgspec.Raw | None,
        current: StreamedRound,
    ) -> AsyncGenerator[bytes, None]:
        """One round asked for as a stream; yields what of it the client gets at once."""
        upstream = self._upstream(tool_choice, kind == "final", stream=True)
        attempt = Trace()
        self.calls += 1
        began = time.perf_counter()
        try:
            opened = await streams.open_stream(
                self._model, upstream, self._caller.request_id, attempt
            )
        finally:
            # Fail-overs happen only before the first event: the attempts are final here, in
            # time for the response headers.
            _merge(self._trace, attempt, book_time=not self._relayed)
        reading = time.perf_counter()
        try:
            for piece in current.feed(opened.first):
                yield piece
            async for event in opened.events:
                for piece in current.feed(event):
                    yield piece
                if current.done:
                    break
        finally:
            # Also when the client leaves mid-round (the generator is closed at a yield): the
            # upstream request is cancelled and its target and lease go back.
            await opened.aclose()
        if not self._relayed:
            self._trace.upstream_seconds += time.perf_counter() - reading
        # A span of its own in traces (gateway/telemetry/spans.py): the round's model call.
        self._trace.add_phase(f"agent round {self._rounds} {kind}", began)
        self._usage.add(current.usage)
        if self._metrics is not None:
            self._metrics.agent_rounds.labels(kind).inc()
        self._step(
            phase=kind,
            round=self._rounds,
            tool_calls=len(current.tool_calls()),
            seconds=round(time.perf_counter() - began, 6),
        )

    def _extension(self) -> dict[str, Any]:
        extension: dict[str, Any] = {"tool_rounds": self._rounds, "tool_results": self._results}
        if self._plan.debug:
            extension["trace"] = self._steps
        return extension

    def _answer(self, body: bytes, keep_calls: frozenset[str] | None = None) -> bytes:
        return final_body(body, self._usage, self._extension(), keep_calls)

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
        # not the gateway's own overhead, so it is booked with the upstream time (by the relay
        # itself once a stream has begun).
        if not self._relayed:
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


def _merge(total: Trace, attempt: Trace, book_time: bool = True) -> None:
    # The client gets one answer: its attempts (x-turnout-attempts) are the first try plus
    # every fail-over in any round. Each round's first call is the loop working, not a retry.
    if attempt.attempts:
        total.attempts = max(total.attempts, 1) + attempt.attempts - 1
    if book_time:
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
        sender: Forwarding,
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
        """The loop runs until the client has something to see (keep-alives go out meanwhile),
        then goes on as the stream is read."""
        loop = _Loop(
            self._sender, self._settings, self._plan, model, request, self._caller, trace,
            self._metrics,
        )  # fmt: skip
        events = _logged(loop.events(self._sender), loop, self._caller.request_id)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        # No release: every round gave back its own target and lease. Closing the generator
        # (the relay's one cleanup duty) closes the round being read.
        return OpenStream(events, events, first)


async def _logged(
    events: AsyncGenerator[bytes, None], loop: _Loop, request_id: str
) -> AsyncGenerator[bytes, None]:
    started = time.perf_counter()
    async with aclosing(events):
        async for event in events:
            yield event
    log.info(
        "agent loop for request %s: %d model calls in %.3fs (streamed)",
        request_id,
        loop.calls,
        time.perf_counter() - started,
    )


def agent_forwarder(
    forwarder: Forwarding,
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
