"""After answering: metrics, the usage row, the rate-limit settlement and ``after_response``.

For every request, however it ended (answered, refused, failed, or the caller left): the
pipeline calls ``settle`` from its ``finally``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway import tokens
from gateway.plugins.context import Exchanged
from gateway.usage import UsageRecord

if TYPE_CHECKING:
    from gateway.pipeline.call import Call
    from gateway.state import GatewayState


async def settle(state: GatewayState, route: str, call: Call) -> None:
    metrics = state.metrics
    trace = call.trace
    elapsed = time.perf_counter() - call.started
    overhead = max(0.0, elapsed - trace.upstream_seconds)
    metrics.child(metrics.requests, route, call.model, str(call.status)).inc()
    metrics.child(metrics.duration, route, call.model).observe(elapsed)
    metrics.child(metrics.overhead, route).observe(overhead)
    if call.ttft is not None:
        metrics.child(metrics.ttft, call.model).observe(call.ttft)
    usage = call.usage
    estimated = usage is None and trace.target is not None
    prompt = completion = cached = 0
    if usage is not None:
        prompt, completion, cached = (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
        )
    elif estimated:
        # No usage from the upstream (or the client left before it came): a guess, marked.
        prompt = tokens.from_request_bytes(call.body_bytes)
        completion = (
            tokens.completion_from_stream(call.chunks)
            if call.stream
            else tokens.completion_from_body(call.sent_bytes)
        )
    if prompt or completion:
        metrics.child(metrics.tokens, call.model, "prompt").inc(prompt)
        metrics.child(metrics.tokens, call.model, "completion").inc(completion)
    if cached:
        provider = trace.target.provider if trace.target is not None else "-"
        metrics.child(metrics.cached_tokens, call.model, provider).inc(cached)
    reasoning = usage.reasoning_tokens if usage is not None else 0
    if reasoning:
        # Part of the completion tokens counted above, as in OpenAI's usage.
        metrics.child(metrics.tokens, call.model, "reasoning").inc(reasoning)
    admission = call.admission
    if admission is not None:
        actual = prompt + completion if (prompt or completion) else None
        if not admission.release_nowait(actual):
            await admission.release(actual)
    if call.hooked is not None:
        text = call.capture.text() if call.capture is not None else call.reply_text
        state.plugins.after_response(call.hooked, Exchanged(call.status, text, usage))
    if state.tracer is not None:
        state.tracer.record(route, call)
    if state.usage is None:
        return
    row = _row(call, route, elapsed, overhead, prompt, completion, cached, estimated)
    row.reasoning_tokens = reasoning
    state.record_usage(row)


def _row(
    call: Call,
    route: str,
    elapsed: float,
    overhead: float,
    prompt: int,
    completion: int,
    cached: int,
    estimated: bool,
) -> UsageRecord:
    trace = call.trace
    # Answered by an upstream, else refused by one (None: turnout refused it before any call).
    target = trace.target or trace.failed
    lease = trace.lease
    notes = ""
    if trace.failures or call.status == 499 or (lease is not None and lease.note):
        notes = _notes(call, lease.note if lease is not None else "")
    identity = call.identity
    return UsageRecord(
        ts=call.ts,
        request_id=call.request_id,
        agent_id=identity.agent_id,
        ingress=route,  # type: ignore[arg-type]
        model=call.model,
        status=call.status,
        duration_ms=elapsed * 1000,
        key_id=identity.key_id,
        project=identity.project,
        channel=identity.channel,
        role=lease.role if lease else None,
        provider=target.provider if target else None,
        upstream_model=target.model if target else None,
        stream=call.stream,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        estimated=estimated,
        ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
        overhead_ms=overhead * 1000,
        notes=notes,
    )


def _notes(call: Call, lease_note: str) -> str:
    """Fallbacks, swaps and disconnects, for humans reading the usage log."""
    notes = [n for n in (lease_note, *call.trace.failures) if n]
    if call.status == 499:
        notes.append("client disconnected")
    return "; ".join(notes)[:1000]
