"""OpenTelemetry traces: a real gateway exporting through the real OTLP/HTTP exporter to a real
receiver on loopback that decodes each export with the official opentelemetry-proto messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from subprocess import DEVNULL
from types import FrameType
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.config import from_mapping
from gateway.config.observability import Otlp, Telemetry
from gateway.engines.events import EngineEvents, event
from gateway.engines.inbox import Lease
from gateway.errors import ConfigError
from gateway.pipeline.call import Call
from gateway.telemetry import spans as spans_module
from gateway.telemetry.settings import Export, export_of, problems, traces_url
from gateway.telemetry.spans import RequestSpans
from gateway.telemetry.tracer import in_worker
from gateway.wire import CompletionDetails, PromptDetails, Usage
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway
from tests.test_agent_loop import WEATHER, tools_section
from tests.test_engines import role

ROOT = Path(__file__).resolve().parents[1]

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
SERVER, CLIENT = 2, 3  # OTLP's SpanKind numbers
STATUS_ERROR = 2


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as running:
        yield running


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def routing(fake: FakeOpenAI, **sections: Any) -> dict[str, Any]:
    return {
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [
            {"name": "chat-model", "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "broken", "targets": [{"provider": "up", "model": "error-500"}]},
        ],
        "routing": {"retries": 0, "backoff_seconds": 0.01},
        **sections,
    }


def by_name(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert found, f"no span {name!r} among {[s.name for s in spans]}"
    return found[0]


def children_of(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


# --- end to end ---------------------------------------------------------------------------------


async def test_env_endpoint_exports_genai_spans_of_a_request(
    receiver: OtlpReceiver, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    async with running_gateway(config_of(routing(fake))) as gw:
        reply = await gw.openai().chat.completions.create(model="chat-model", messages=USER)
        assert reply.usage is not None
    # The gateway's shutdown flushed the batch: every span is in by now.
    spans = receiver.spans()
    root = by_name(spans, "chat chat-model")
    assert root.kind == SERVER
    assert root.parent_span_id == b""
    attributes = root.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "chat-model"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.response.model"] == "ok"
    assert attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 0
    assert attributes["http.response.status_code"] == 200
    assert root.resource["service.name"] == "gateway-under-test"
    upstream = by_name(spans, "upstream call")
    assert upstream.kind == CLIENT
    assert upstream.parent_span_id == root.span_id
    assert upstream.trace_id == root.trace_id
    assert root.start_ns <= upstream.start_ns <= upstream.end_ns <= root.end_ns


async def test_stream_span_carries_time_to_first_chunk(
    receiver: OtlpReceiver, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    async with running_gateway(config_of(routing(fake))) as gw:
        stream = await gw.openai().chat.completions.create(
            model="chat-model",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
    spans = receiver.spans()
    root = by_name(spans, "chat chat-model")
    ttft = root.attributes["gen_ai.response.time_to_first_chunk"]
    duration = (root.end_ns - root.start_ns) / 1e9
    assert 0 < ttft <= duration
    assert root.attributes["gen_ai.request.stream"] is True
    assert root.attributes["gen_ai.usage.output_tokens"] > 0
    # A stream's upstream call lasts until its last event was read: the request's end.
    upstream = by_name(spans, "upstream call")
    assert root.start_ns <= upstream.start_ns < upstream.end_ns == root.end_ns


async def test_failed_request_span_is_an_error(
    receiver: OtlpReceiver, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    async with running_gateway(config_of(routing(fake))) as gw:
        with pytest.raises(openai.APIStatusError):
            await gw.openai().chat.completions.create(model="broken", messages=USER)
    root = by_name(receiver.spans(), "chat broken")
    assert root.status_code == STATUS_ERROR
    assert root.attributes["error.type"] == str(root.attributes["http.response.status_code"])


async def test_routing_yaml_endpoint_turns_export_on_with_its_headers(
    receiver: OtlpReceiver, fake: FakeOpenAI
) -> None:
    telemetry = {
        "otlp": {"endpoint": receiver.url, "headers": {"x-collector-key": "k1"}},
        "service_name": "turnout-yaml",
    }
    async with running_gateway(config_of(routing(fake, telemetry=telemetry))) as gw:
        await gw.openai().embeddings.create(model="chat-model", input="hello")
    spans = receiver.spans()
    root = by_name(spans, "embeddings chat-model")
    assert root.resource["service.name"] == "turnout-yaml"
    assert receiver.headers[0].get("x-collector-key") == "k1"


async def test_each_agent_loop_round_is_a_child_span(
    receiver: OtlpReceiver, fake: FakeOpenAI
) -> None:
    fake.script = ["tools", "ok"]
    raw = routing(fake, telemetry={"otlp": {"endpoint": receiver.url}})
    raw["plugins"] = {"enabled": ["tools"]}
    raw["tools"] = tools_section()
    async with running_gateway(config_of(raw)) as gw:
        reply = await gw.openai().chat.completions.create(
            model="chat-model", messages=USER, tools=[WEATHER]
        )
    assert reply.choices[0].message.content == "echo: ping"
    spans = receiver.spans()
    root = by_name(spans, "chat chat-model")
    rounds = [s for s in children_of(spans, root) if s.name.startswith("agent round")]
    assert [s.name for s in sorted(rounds, key=lambda s: s.start_ns)] == [
        "agent round 0 tools",
        "agent round 1 tools",
    ]
    assert rounds[0].end_ns <= rounds[1].start_ns or rounds[1].end_ns <= rounds[0].start_ns


async def test_engine_queue_and_load_become_child_spans(receiver: OtlpReceiver) -> None:
    """A request that waited for its role's engine to load: queue wait, engine load inside it."""
    events = EngineEvents()
    spans = RequestSpans(Export(endpoint=traces_url(receiver.url)), {}, events)
    call = Call("req-1")
    call.model = "coder"
    call.status = 200
    call.usage = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10)
    queued = time.perf_counter()
    events.publish(event("coder", "stopped", "queued"))
    events.publish(event("coder", "starting", "starting"))
    events.publish(event("coder", "starting", "loading"))
    events.publish(event("coder", "ready", "ready"))
    call.trace.lease = Lease("coder", "coder", "", waited=time.perf_counter() - queued + 1e-6)
    call.trace.upstream_started = time.perf_counter()
    call.trace.upstream_last = 0.001
    call.trace.add_phase("agent round 0", call.trace.upstream_started)
    spans.record("chat", call)
    await spans.close()
    received = receiver.spans()
    root = by_name(received, "chat coder")
    assert root.attributes["turnout.request_id"] == "req-1"
    queue = by_name(received, "queue wait")
    assert queue.parent_span_id == root.span_id
    assert queue.attributes["turnout.engine.role"] == "coder"
    load = by_name(received, "engine load")
    assert load.parent_span_id == queue.span_id
    assert "loading" in load.attributes["turnout.engine.stages"]
    assert by_name(received, "agent round 0").parent_span_id == root.span_id
    assert {s.name for s in children_of(received, root)} == {
        "queue wait",
        "upstream call",
        "agent round 0",
    }


async def test_cached_and_reasoning_tokens_are_usage_attributes(receiver: OtlpReceiver) -> None:
    spans = RequestSpans(Export(endpoint=traces_url(receiver.url)), {})
    call = Call("req-2")
    call.model = "thinker"
    call.status = 200
    call.usage = Usage(
        prompt_tokens=1200,
        completion_tokens=300,
        total_tokens=1500,
        prompt_tokens_details=PromptDetails(cached_tokens=1024),
        completion_tokens_details=CompletionDetails(reasoning_tokens=250),
    )
    spans.record("chat", call)
    call = Call("req-3")  # an upstream that reports no reasoning: no reasoning attribute
    call.model = "plain"
    call.usage = Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7)
    spans.record("chat", call)
    await spans.close()
    received = receiver.spans()
    attributes = by_name(received, "chat thinker").attributes
    assert attributes["gen_ai.usage.input_tokens"] == 1200
    assert attributes["gen_ai.usage.output_tokens"] == 300
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert attributes["gen_ai.usage.reasoning.output_tokens"] == 250
    plain = by_name(received, "chat plain").attributes
    assert plain["gen_ai.usage.cache_read.input_tokens"] == 0
    assert "gen_ai.usage.reasoning.output_tokens" not in plain


async def test_a_sampler_that_keeps_none_sends_nothing(receiver: OtlpReceiver) -> None:
    spans = RequestSpans(Export(endpoint=traces_url(receiver.url), sample_ratio=0.0), {})
    for n in range(50):
        spans.record("chat", Call(f"r{n}"))
    await spans.close()
    assert receiver.span_count == 0 and spans.exporter.sent == 0


async def test_a_sampler_keeps_its_share_of_requests(receiver: OtlpReceiver) -> None:
    spans = RequestSpans(Export(endpoint=traces_url(receiver.url), sample_ratio=0.25), {})
    for n in range(800):
        spans.record("chat", Call(f"r{n}"))
    await spans.close()
    # 200 expected; outside 120..280 is a chance below one in a billion.
    assert 120 <= receiver.span_count <= 280
    assert spans.exporter.sent == receiver.span_count


def finished_call(request_id: str, prompt_tokens: int = 300) -> Call:
    call = Call(request_id)
    call.model = "coder"
    call.status = 200
    call.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=20, total_tokens=320)
    call.trace.upstream_started = time.perf_counter()
    call.trace.upstream_last = 0.002
    return call


@pytest.mark.parametrize("in_worker", [True, False], ids=["worker", "inline"])
async def test_many_requests_go_out_in_full_batches_each_span_once(
    receiver: OtlpReceiver, in_worker: bool
) -> None:
    """Encoded in batches after the fact: every request's two spans arrive, in posts of at most
    max_batch spans, with the values each request had (token counts of every varint size)."""
    export = Export(endpoint=traces_url(receiver.url), max_batch=64, schedule_delay_seconds=60)
    spans = RequestSpans(export, {}, in_worker=in_worker)
    sizes = [0, 1, 127, 128, 16383, 16384, 2_000_000]
    for n in range(300):
        spans.record("chat", finished_call(f"req-{n}", sizes[n % len(sizes)]))
    await spans.close()
    assert spans.exporter.sent == 600 and receiver.span_count == 600
    assert receiver.export_count >= 600 // 64
    received = receiver.spans()
    roots = {s.attributes["turnout.request_id"]: s for s in received if s.name == "chat coder"}
    assert len(roots) == 300
    for n in range(300):
        assert roots[f"req-{n}"].attributes["gen_ai.usage.input_tokens"] == sizes[n % len(sizes)]
    assert len({s.span_id for s in received}) == 600
    assert all(s.trace_id != bytes(16) and s.span_id != bytes(8) for s in received)


async def test_a_span_too_large_for_a_two_byte_size_is_framed_right(
    receiver: OtlpReceiver,
) -> None:
    """A request span is framed in the same pack as its ids when its size takes two bytes; one
    past that (a client's 20,000-character request id) takes the general path, and both decode."""
    spans = RequestSpans(Export(endpoint=traces_url(receiver.url)), {})
    long_id = "x" * 20_000
    spans.record("chat", finished_call(long_id))
    spans.record("chat", finished_call("short"))
    await spans.close()
    roots = {s.attributes["turnout.request_id"] for s in receiver.spans() if s.name == "chat coder"}
    assert roots == {long_id, "short"} and receiver.span_count == 4


@pytest.mark.parametrize("in_worker", [True, False], ids=["worker", "inline"])
async def test_heads_started_over_still_name_each_request_right(
    receiver: OtlpReceiver, in_worker: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the cache of shared heads the tracer starts over; items already waiting keep the
    heads they were recorded with (numbers are never reused)."""
    monkeypatch.setattr(spans_module, "_HEADS", 3)
    spans = RequestSpans(Export(endpoint=traces_url(receiver.url)), {}, in_worker=in_worker)
    for n in range(20):
        call = finished_call(f"req-{n}")
        call.model = f"model-{n % 7}"
        spans.record("chat", call)
    await spans.close()
    roots = [s for s in receiver.spans() if s.name.startswith("chat ")]
    assert len(roots) == 20
    for root in roots:
        n = int(root.attributes["turnout.request_id"].removeprefix("req-"))
        assert root.name == f"chat model-{n % 7}"
        assert root.attributes["gen_ai.request.model"] == f"model-{n % 7}"


def test_worker_auto_uses_a_process_only_with_a_core_to_spare() -> None:
    assert not in_worker(Telemetry(), 1)
    assert in_worker(Telemetry(), 2)
    assert in_worker(Telemetry(worker="process"), 1)
    assert not in_worker(Telemetry(worker="inline"), 64)


def test_an_unknown_worker_mode_is_named() -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.worker"):
        from_mapping({"telemetry": {"worker": "thread"}})


async def test_gzip_export_reaches_the_collector(receiver: OtlpReceiver) -> None:
    spans = RequestSpans(Export(endpoint=traces_url(receiver.url), gzip=True), {})
    spans.record("chat", finished_call("req-gz"))
    await spans.close()
    assert receiver.headers[0]["Content-Encoding"] == "gzip"
    assert by_name(receiver.spans(), "chat coder").attributes["turnout.request_id"] == "req-gz"


async def test_https_collector_with_its_own_ca(tmp_path: Path) -> None:
    """An https endpoint goes through aiohttp with the CA named by the certificate setting."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    request += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    request += ["-addext", "subjectAltName=IP:127.0.0.1"]
    made = await asyncio.create_subprocess_exec(*request, stdout=DEVNULL, stderr=DEVNULL)
    assert await made.wait() == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with OtlpReceiver(ssl_context=context) as tls:
        assert tls.url.startswith("https://")
        export = Export(endpoint=traces_url(tls.url), certificate=str(cert))
        spans = RequestSpans(export, {})
        spans.record("chat", finished_call("req-tls"))
        await spans.close()
        assert spans.exporter.sent == 2 and tls.span_count == 2
        # Without the CA the collector's certificate is refused: counted, never raised.
        untrusted = RequestSpans(Export(endpoint=traces_url(tls.url)), {})
        untrusted.record("chat", finished_call("req-untrusted"))
        await untrusted.close()
        assert untrusted.exporter.failed == 2 and tls.span_count == 2


async def test_a_collector_that_is_down_costs_spans_not_requests() -> None:
    spans = RequestSpans(Export(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces"), {})
    for n in range(5):
        spans.record("chat", finished_call(f"req-{n}"))
    await spans.close()
    assert spans.exporter.failed == 10 and spans.exporter.sent == 0


async def eventually(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_tracing_worker_that_dies_is_replaced(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Spans are encoded and posted by a worker process; killed, it is started again and the
    requests after it are exported; the gateway logs it and never raises."""
    export = Export(endpoint=traces_url(receiver.url), schedule_delay_seconds=0.05)
    spans = RequestSpans(export, {})
    spans.record("chat", finished_call("before"))
    await eventually(lambda: receiver.span_count == 2)
    first = spans.exporter.worker_pid
    assert first is not None and first != os.getpid()
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: spans.exporter.worker_pid is None)
    await asyncio.sleep(1.1)  # RESTART_SECONDS
    spans.record("chat", finished_call("after"))
    await eventually(lambda: receiver.span_count == 4)
    assert spans.exporter.worker_pid not in (None, first)
    await spans.close()
    ids = {s.attributes["turnout.request_id"] for s in receiver.spans() if s.name == "chat coder"}
    assert ids == {"before", "after"}
    assert any("tracing worker exited" in r.getMessage() for r in caplog.records)


def test_the_worker_ends_with_the_gateway(tmp_path: Path) -> None:
    """A gateway killed outright leaves no tracing worker behind: its pipe closes, the worker
    sends what it holds and exits."""
    script = f"""
import asyncio, os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from gateway.telemetry.settings import Export
from gateway.telemetry import spans as spans_module
from gateway.telemetry.spans import RequestSpans
from gateway.telemetry.tracer import in_worker
from tests.test_telemetry import finished_call

async def main():
    spans = RequestSpans(Export(endpoint="http://127.0.0.1:9/v1/traces"), {{}})
    spans.record("chat", finished_call("r"))
    while spans.exporter.worker_pid is None:
        await asyncio.sleep(0.05)
    print(spans.exporter.worker_pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""
    gateway = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert gateway.stdout is not None
    worker = int(gateway.stdout.readline())
    gateway.kill()
    gateway.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{worker}").exists() and "Z" not in _state(worker):
        assert time.monotonic() < deadline, "the worker outlived the gateway"
        time.sleep(0.05)


async def test_sigterm_to_the_whole_group_loses_no_spans(
    receiver: OtlpReceiver, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """systemd stops a unit by sending SIGTERM to every process in it, the tracing worker too
    (which has a process group of its own, so a signal to the gateway's group misses it): the
    worker waits for the gateway's shutdown to close its pipe, then sends what it holds
    (here, every span: the export's schedule delay has not come) and exits."""
    path = tmp_path / "routing.yaml"
    sections = {"server": {"database": str(tmp_path / "t.db")}, "telemetry": {"worker": "process"}}
    path.write_text(json.dumps(routing(fake, **sections)))
    port = free_port()
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "60000",
    }
    gateway = _serve_in_a_group_of_its_own(path, port, env, tmp_path / "gateway.log")
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        await eventually(lambda: _answers(port), 60)
        for _ in range(3):
            await client.chat.completions.create(model="chat-model", messages=USER)
        await client.close()
        # The worker starts with the first shipment and holds the spans (schedule delay 60 s).
        await eventually(lambda: _children(gateway.pid) != [])
        worker = _children(gateway.pid)[0]
        await asyncio.sleep(1.0)  # past the worker's imports, to its own signal settings
        # As systemd stops a unit: SIGTERM to every process in it; the gateway's group first.
        os.killpg(gateway.pid, signal.SIGTERM)
        os.kill(worker, signal.SIGTERM)
        await eventually(lambda: gateway.poll() is not None, 30)
    finally:
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGKILL)
    log = (tmp_path / "gateway.log").read_text()
    assert gateway.returncode == 0, log
    assert "tracing worker exited" not in log
    assert receiver.span_count == 6


def _serve_in_a_group_of_its_own(
    config: Path, port: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
    with log.open("wb") as stderr:
        return subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=DEVNULL, stderr=stderr, start_new_session=True
        )


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]
    except (OSError, IndexError):
        return "Z"


def test_tracing_off_loads_no_tracing_code() -> None:
    """Off by default: a gateway built and opened never imports the span builder or exporter."""
    script = """
import asyncio, sys, tempfile, os
for name in [n for n in os.environ if n.startswith("OTEL_")]:
    del os.environ[name]
from gateway.config import from_mapping
from gateway.state import GatewayState, Wiring
from adapters.builtin import default_registry
db = os.path.join(tempfile.mkdtemp(), "t.db")
config = from_mapping({"server": {"database": db}}, "test", {})
async def main():
    state = await GatewayState.open(Wiring.of(config, default_registry()))
    assert state.tracer is None
    await state.close()
asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith(("gateway.telemetry.", "opentelemetry.sdk"))))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert (
        done.stdout.strip().splitlines()[-1]
        == "['gateway.telemetry.settings', 'gateway.telemetry.tracer']"
    )


# --- settings (pure) ----------------------------------------------------------------------------

OFF = Telemetry()


def test_off_by_default_and_without_an_endpoint() -> None:
    assert export_of(OFF, {}) is None
    assert problems(OFF, {}) == []


def test_env_variables_win_over_routing_yaml() -> None:
    section = Telemetry(otlp=Otlp(endpoint="http://yaml:4318", headers={"a": "b"}))
    export = export_of(section, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318/"})
    assert export is not None
    assert export.endpoint == "http://env:4318/v1/traces"
    assert export.headers == {"a": "b"}
    export = export_of(
        section,
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/otlp",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=k%201,x=y",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=r",
            "OTEL_SERVICE_NAME": "s",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    assert export is not None
    assert export.endpoint == "https://traces.example/otlp"
    assert export.headers == {"api-key": "k 1", "x": "y"}
    assert export.timeout_seconds == 2.5 and export.gzip
    assert export.resource["service.name"] == "s"
    assert export.resource["deployment.environment"] == "prod"
    assert export.schedule_delay_seconds == 0.2


def test_exporter_variable_turns_export_on_or_off() -> None:
    on = export_of(OFF, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert on is not None and on.endpoint == "http://localhost:4318/v1/traces"
    section = Telemetry(otlp=Otlp(endpoint="http://yaml:4318"))
    assert export_of(section, {"OTEL_TRACES_EXPORTER": "none"}) is None
    assert export_of(section, {"OTEL_SDK_DISABLED": "true"}) is None
    on = export_of(section, {})
    assert on is not None and on.resource["service.name"] == "turnout"


def test_sampler_variables_set_the_share_traced() -> None:
    section = Telemetry(otlp=Otlp(endpoint="http://yaml:4318"))
    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    sampled = export_of(section, ratio)
    assert sampled is not None and sampled.sample_ratio == 0.25
    off = export_of(section, {"OTEL_TRACES_SAMPLER": "always_off"})
    assert off is not None and off.sample_ratio == 0.0


def test_unsupported_protocol_exporter_and_values_are_named() -> None:
    section = Telemetry(otlp=Otlp(endpoint="collector:4317"))
    found = problems(section, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert any(p.startswith("telemetry.otlp.endpoint: expected an http(s) URL") for p in found)
    assert any(p.startswith("OTEL_EXPORTER_OTLP_PROTOCOL:") for p in found)
    found = problems(OFF, {"OTEL_TRACES_EXPORTER": "zipkin"})
    assert found and found[0].startswith("OTEL_TRACES_EXPORTER:")
    assert problems(OFF, {"OTEL_TRACES_EXPORTER": "otlp,console"}) == []
    assert problems(OFF, {"OTEL_BSP_SCHEDULE_DELAY": "soon"}) == [
        "OTEL_BSP_SCHEDULE_DELAY: expected a number > 0, got 'soon'"
    ]
    assert problems(OFF, {"OTEL_TRACES_SAMPLER": "jaeger_remote"})[0].startswith(
        "OTEL_TRACES_SAMPLER:"
    )


# --- a real engine swap -------------------------------------------------------------------------


@pytest.mark.engine
async def test_a_swap_between_real_engines_is_a_queue_wait_with_the_load_inside(
    receiver: OtlpReceiver, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Two llama-server roles, one loaded at a time: a streamed request loads the first, a plain
    one swaps to the second; each root span has a queue wait whose child is the engine's load."""
    roles = {"fast": role(tiny_models["tiny-hello"]), "coder": role(tiny_models["tiny-toolcall"])}
    raw = {
        "roles": roles,
        "engines": {"max_wait_seconds": 2, "wait_timeout_seconds": 60, "log_dir": str(tmp_path)},
        "routing": {"retries": 0},
        "telemetry": {"otlp": {"endpoint": receiver.url}},
    }
    async with running_gateway(config_of(raw)) as gw:
        client = gw.openai()
        stream = await client.chat.completions.create(
            model="fast", messages=USER, max_tokens=8, stream=True
        )
        async for _ in stream:
            pass
        await client.chat.completions.create(model="coder", messages=USER, max_tokens=8)
    spans = receiver.spans()
    for model, kind, stopped in (("fast", "engine load", None), ("coder", "engine swap", "fast")):
        root = by_name(spans, f"chat {model}")
        assert root.attributes["gen_ai.request.model"] == model
        assert root.attributes["gen_ai.request.stream"] is (model == "fast")
        assert root.attributes["gen_ai.usage.output_tokens"] > 0
        assert root.attributes["turnout.provider"] == f"role:{model}"
        assert root.attributes["gen_ai.provider.name"]
        children = {s.name: s for s in children_of(spans, root)}
        assert {"queue wait", "upstream call"} <= children.keys()
        queue = children["queue wait"]
        assert queue.attributes["turnout.engine.role"] == model
        assert queue.end_ns <= children["upstream call"].start_ns
        (load,) = children_of(spans, queue)
        assert load.name == kind
        assert "starting" in str(load.attributes["turnout.engine.stages"]).split(",")
        assert load.attributes.get("turnout.engine.stopped") == stopped
        # The engines' events carry wall-clock times, the request's spans monotonic ones: a
        # millisecond of leeway between the two clocks.
        assert queue.start_ns - 1_000_000 <= load.start_ns < load.end_ns
    assert "gen_ai.response.time_to_first_chunk" in by_name(spans, "chat fast").attributes


# --- cost when off ------------------------------------------------------------------------------

OBSERVABILITY = (
    f"{os.sep}gateway{os.sep}telemetry{os.sep}",
    f"{os.sep}gateway{os.sep}captures{os.sep}",
)


async def observability_functions_run(gw: RunningGateway) -> set[str]:
    """The functions of gateway/telemetry/ and gateway/captures/ that ran while a plain and a
    streamed request were served (after a first request, so nothing is first-time setup)."""
    client = gw.openai()
    await client.chat.completions.create(model="chat-model", messages=USER)
    ran: set[str] = set()

    def profile(frame: FrameType, event: str, _: object) -> None:
        if event == "call" and frame.f_code.co_filename.endswith(".py"):
            path = frame.f_code.co_filename
            if any(part in path for part in OBSERVABILITY):
                ran.add(f"{Path(path).name}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        await client.chat.completions.create(model="chat-model", messages=USER)
        stream = await client.chat.completions.create(
            model="chat-model", messages=USER, stream=True
        )
        async for _ in stream:
            pass
    finally:
        sys.setprofile(None)
    return ran


async def test_when_off_no_telemetry_or_capture_code_runs_per_request(
    receiver: OtlpReceiver, fake: FakeOpenAI
) -> None:
    """Zero cost when off, shown rather than timed: with traces and captures off (the default)
    a request runs not one function of either; the same watch with both on sees them run."""
    async with running_gateway(config_of(routing(fake))) as gw:
        assert await observability_functions_run(gw) == set()
    on = routing(fake, telemetry={"otlp": {"endpoint": receiver.url}}, capture={"enabled": True})
    async with running_gateway(config_of(on)) as gw:
        ran = await observability_functions_run(gw)
    assert {"spans.py:record", "ring.py:watch", "recording.py:write"} <= ran
