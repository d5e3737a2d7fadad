"""Instructions per request in the tracing worker process (gateway/telemetry/worker.py).

bench/telemetry.py's callgrind counts are of the gateway's own process; the spans are encoded
and posted by its worker, a child process. Here the worker runs alone under callgrind, fed the
frames a gateway would ship for ``requests`` bench requests (made by the real tracer, from
calls shaped like the bench's: a model, a target, usage, an upstream call; for streams a time
to first chunk), one shipment at a time as the gateway paces them, posting to the OTLP
receiver; then again for a fifth as many. The difference, per request, leaves the worker's
start-up and its last flush out.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.instructions import require_valgrind
from bench.stacks import ROOT, UPSTREAM_MODEL
from gateway.config.upstreams import Target
from gateway.pipeline.call import Call
from gateway.telemetry.encoding import Heads, Item
from gateway.telemetry.link import SHIP_SPANS
from gateway.telemetry.settings import Export, traces_url
from gateway.telemetry.spans import RequestSpans
from gateway.telemetry.worker import (
    RESET_FRAME,
    SPANS,
    export_frame,
    heads_frame,
    spans_frame,
)
from gateway.wire import Usage

# Between two shipments: the worker reads each on its own, as it does behind a gateway.
_PACE_SECONDS = 0.1


class FrameRecorder:
    """A tracer link that keeps the frames ``WorkerLink`` would write to the worker's pipe."""

    sent = failed = dropped = 0
    worker_pid: int | None = None

    def __init__(self, export: Export) -> None:
        self.frames = [export_frame(export)]
        self._items: list[Item] = []
        self._spans = 0

    def heads(self, heads_id: int, heads: Heads) -> None:
        self.frames.append(heads_frame(heads_id, heads))

    def reset_heads(self) -> None:
        self.ship()
        self.frames.append(RESET_FRAME)

    def add(self, item: Item, spans: int) -> None:
        self._items.append(item)
        self._spans += spans
        if self._spans >= SHIP_SPANS:
            self.ship()

    def ship(self) -> None:
        if self._items:
            self.frames.append(spans_frame(self._spans, self._items))
            self._items, self._spans = [], 0

    async def close(self) -> None:
        self.ship()


def frames(requests: int, stream: bool, endpoint: str) -> list[bytes]:
    # Queue room for a whole run: fed faster than a gateway under load ships, the worker must
    # not drop what it is meant to count.
    export = Export(endpoint=traces_url(endpoint), max_queue=1 << 30)
    recorder = FrameRecorder(export)
    tracer = RequestSpans(export, {}, link=recorder)
    target = Target(provider="fake", model=UPSTREAM_MODEL)
    for n in range(requests):
        call = Call(f"chatcmpl-{n:024x}")
        call.model = "bench"
        call.stream = stream
        call.status = 200
        call.usage = Usage(prompt_tokens=520, completion_tokens=16, total_tokens=536)
        call.trace.target = target
        call.trace.upstream_started = time.perf_counter()
        call.trace.upstream_last = 0.0004
        call.ttft = 0.0011 if stream else None
        tracer.record("chat", call)
    recorder.ship()
    return recorder.frames


def _count(shipments: list[bytes], out: Path) -> int:
    """All instructions of one worker run under callgrind, fed ``shipments``."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "gateway.telemetry.worker",
    ]
    # Pipes both ways, as the gateway gives it (its event loop cannot watch a file).
    worker = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    assert worker.stdin is not None and worker.stdout is not None
    for shipment in shipments:
        worker.stdin.write(shipment)
        worker.stdin.flush()
        if shipment[4:5] == SPANS:
            time.sleep(_PACE_SECONDS)
    worker.stdin.close()
    worker.stdout.read()
    worker.wait(timeout=600)
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def per_request(requests: int, stream: bool, receiver: str, work: Path) -> float:
    """The worker's instructions per request, ``requests`` against a fifth as many."""
    require_valgrind()
    few = max(requests // 5, 1)
    kind = "stream" if stream else "json"
    counts = {
        n: _count(frames(n, stream, receiver), work / f"callgrind-worker-{kind}-{n}.out")
        for n in (few, requests)
    }
    return round((counts[requests] - counts[few]) / (requests - few))
