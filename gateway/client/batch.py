"""``turnout batch <file>``: run many prompts through a gateway, some at a time, resumably.

Results go to a JSON Lines file, one line per item as it completes::

    {"id": 3, "ok": true, "model": "fast", "response": "...", "finish_reason": "stop",
     "usage": {...}, "latency_ms": 812.4, "error": null}

Only the main thread writes, a whole line at a time, flushed: whatever stops the run (Ctrl-C,
a crash, a kill) leaves a file of complete lines, plus at most one cut-off last line after a
hard kill, which the next run ignores. The next run skips the ids already there with
``ok: true`` and appends the rest, so a retried item's last line is its latest result.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from gateway.client.output import emit_json, fail

if TYPE_CHECKING:
    from gateway.client.api import GatewayClient
    from gateway.client.batch_items import Item
    from gateway.client.progress import Progress


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "batch",
        parents=[common],
        help="run a file of prompts (JSONL, JSON, YAML or CSV) in parallel, resumably",
        description="Run every item of FILE through the gateway, --concurrency at a time, "
        "appending one JSON line per result to --output. Run it again after an interruption "
        "to do only what is left: ids already in the output with ok=true are skipped.",
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--model", help="model for items that name none (env TURNOUT_MODEL)")
    parser.add_argument("--output", type=Path, help="results file (default: <file>.results.jsonl)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests at a time (default 4)")
    parser.add_argument(
        "--format",
        choices=("jsonl", "json", "yaml", "csv"),
        help="input format (default: from the file's suffix)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per request (default 600)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


@dataclass
class Tally:
    total: int
    skipped: int
    ok: int = 0
    failed: int = 0
    interrupted: bool = False

    def as_json(self, output: Path, seconds: float) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "remaining": self.total - self.skipped - self.ok - self.failed,
            "interrupted": self.interrupted,
            "output": str(output),
            "elapsed_seconds": round(seconds, 3),
        }


def run(args: argparse.Namespace) -> int:
    from gateway.client.api import GatewayClient
    from gateway.client.batch_items import ItemError, read_items
    from gateway.client.settings import SettingsError, from_args

    if args.concurrency < 1:
        return fail("--concurrency must be at least 1", 2)
    output: Path = args.output or args.file.with_name(args.file.name + ".results.jsonl")
    try:
        settings = from_args(args)
        items = read_items(args.file, args.format)
    except (ItemError, SettingsError) as exc:
        return fail(str(exc))
    default_model = args.model or settings.model
    unnamed = [item.id for item in items if item.model is None]
    if unnamed and not default_model:
        shown = ", ".join(str(i) for i in unnamed[:5]) + (", ..." if len(unnamed) > 5 else "")
        return fail(f"items {shown} name no model: pass --model (or set TURNOUT_MODEL)")
    done = finished_ids(output)
    todo = [item for item in items if item.key not in done]
    client = GatewayClient(
        settings.url, key=settings.api_key, admin_key=settings.admin, timeout=args.timeout
    )
    tally = Tally(total=len(items), skipped=len(items) - len(todo))
    started = time.monotonic()
    if todo:
        execute(client, todo, default_model, output, args.concurrency, tally, args.quiet)
    elapsed = time.monotonic() - started
    if args.json:
        emit_json(tally.as_json(output, elapsed))
    else:
        print(_summary(tally, output, elapsed), file=sys.stderr)
    if tally.interrupted:
        return 130
    return 1 if tally.failed else 0


def finished_ids(output: Path) -> set[str]:
    """Ids with an ``ok: true`` line in a results file; unreadable lines are ignored."""
    done: set[str] = set()
    try:
        lines = output.read_bytes().splitlines()
    except FileNotFoundError:
        return done
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the cut-off last line of a killed run
        if isinstance(record, dict) and record.get("ok") is True and "id" in record:
            done.add(str(record["id"]))
    return done


def execute(
    client: GatewayClient,
    todo: list[Item],
    default_model: str | None,
    output: Path,
    concurrency: int,
    tally: Tally,
    quiet: bool,
) -> None:
    """Run ``todo`` on ``concurrency`` worker threads; this thread alone writes ``output``.

    Workers are daemon threads that take items until none are left or ``stop`` is set.
    Ctrl-C sets ``stop`` instead of raising KeyboardInterrupt: an exception could land between
    taking a finished result off the queue and writing it, and lose it. The loop then writes
    the results already finished and returns; requests still in flight are abandoned (their
    connections close when the process exits, so the gateway cancels them) and the next run
    does those items again. A second Ctrl-C interrupts at once, as usual.
    """
    from gateway.client.progress import Progress

    pending: queue.SimpleQueue[Item] = queue.SimpleQueue()
    for item in todo:
        pending.put(item)
    results: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            results.put(outcome(client, item, default_model))

    progress = Progress(tally.total, tally.skipped, enabled=not quiet)
    progress.draw(force=True)
    with _append(output) as out, _stop_on_interrupt(stop):
        for n in range(min(concurrency, len(todo))):
            threading.Thread(target=work, name=f"batch-{n}", daemon=True).start()
        try:
            remaining = len(todo)
            while remaining and not stop.is_set():
                try:
                    record = results.get(timeout=0.25)
                except queue.Empty:
                    progress.draw()
                    continue
                _write(out, record, tally, progress)
                remaining -= 1
            if remaining:
                tally.interrupted = True
                while True:
                    try:
                        _write(out, results.get_nowait(), tally, progress)
                    except queue.Empty:
                        break
        finally:
            progress.finish()


@contextmanager
def _stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """While the block runs, the first SIGINT sets ``stop`` (and restores the usual handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def outcome(client: GatewayClient, item: Item, default_model: str | None) -> dict[str, Any]:
    """One item's result line; never raises (a worker thread must not die)."""
    from gateway.client.api import ClientError

    model = item.model or default_model
    record: dict[str, Any] = {"id": item.id, "ok": False, "model": model}
    started = time.monotonic()
    try:
        reply = client.chat({**item.params, "model": model, "messages": item.messages})
    except ClientError as exc:
        record.update(response=None, finish_reason=None, usage=None, error=str(exc))
    except Exception as exc:
        record.update(
            response=None, finish_reason=None, usage=None, error=f"{type(exc).__name__}: {exc}"
        )
    else:
        record.update(
            ok=True,
            response=reply.text,
            finish_reason=reply.finish_reason,
            usage=reply.usage,
            error=None,
        )
    record["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    return record


def _append(output: Path) -> Any:
    """The results file opened to append, starting on a fresh line after a cut-off one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if output.exists() and output.stat().st_size:
        with output.open("rb") as existing:
            existing.seek(-1, 2)
            torn = existing.read(1) != b"\n"
    out = output.open("a", encoding="utf-8")
    if torn:
        out.write("\n")
    return out


def _write(out: Any, record: dict[str, Any], tally: Tally, progress: Progress) -> None:
    # One write call per line: an interrupt lands before or after it, never inside a line.
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
    if record["ok"]:
        tally.ok += 1
    else:
        tally.failed += 1
    progress.advance(record["ok"])


def _summary(tally: Tally, output: Path, seconds: float) -> str:
    parts = [f"{tally.ok} ok", f"{tally.failed} failed"]
    if tally.skipped:
        parts.append(f"{tally.skipped} already done")
    line = f"{tally.total} items: {', '.join(parts)} in {seconds:.1f}s -> {output}"
    if tally.interrupted:
        left = tally.total - tally.skipped - tally.ok - tally.failed
        line += f"\ninterrupted with {left} left: run the same command again to finish"
    return line
