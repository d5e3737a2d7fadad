"""``turnout switch <role>``: load a local role and show its progress until it is ready.

The switch is asked once without waiting (a wrong role fails at once), then with
``?wait=true`` on a helper thread: that answer is the verdict (ready, failed, fallback or
superseded), exact even when the start fails or another switch wins.
Meanwhile the main thread prints the role's stages as the gateway publishes them on
``GET /engine/events`` (stopping coder, starting fast, loading, restoring its KV cache,
ready), so a slow load shows where it is. ``--no-wait`` asks and returns.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from gateway.client.output import emit_json, fail

if TYPE_CHECKING:
    from gateway.client.api import EventStream, GatewayClient

# Called with the seconds since the switch began and the stage in words ("starting role fast").
Report = Callable[[float, str], None]

POLL_SECONDS = 0.2


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "switch",
        parents=[common],
        help="load a local role (hot-swap) and show progress until it is ready",
        description="POST /engine/switch/<role>, then show its stages from /engine/events until "
        "the role is ready (exit 0) or cannot be loaded (exit 1).",
    )
    parser.add_argument("role")
    parser.add_argument(
        "--no-wait", action="store_true", help="ask for the switch and return at once"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up after this many seconds (600)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.client.api import ClientError, GatewayClient
    from gateway.client.settings import SettingsError, from_args

    try:
        settings = from_args(args)
        client = GatewayClient(
            settings.url, key=settings.api_key, admin_key=settings.admin, timeout=args.timeout
        )
        if args.no_wait:
            return _ask(client, args.role, args.json)
        printer = None if args.json else StatePrinter(sys.stdout)
        try:
            outcome = follow(client, args.role, args.timeout, printer)
        finally:
            if printer is not None:
                printer.close()
    except (ClientError, SettingsError) as exc:
        if args.json:
            emit_json({"ok": False, "role": args.role, "error": str(exc)})
        return fail(str(exc))
    if args.json:
        emit_json(outcome)
    elif outcome["ok"]:
        print(f"{args.role} is ready ({outcome['elapsed_seconds']:.1f} s)")
    if not outcome["ok"]:
        return fail(outcome["error"])
    return 0


def follow(
    client: GatewayClient, role: str, timeout: float, report: Report | None
) -> dict[str, Any]:
    """Switch to ``role`` and wait for the verdict; ``report(elapsed, stage)`` with each stage
    the gateway publishes for it. Raises ``ClientError`` when the gateway refuses the switch."""

    started = time.monotonic()
    # Followed before the switch is asked for: a fast engine's first stages come within
    # milliseconds of the ask, before a stream opened after it would see them.
    stages = _Stages(client, role, report, started) if report is not None else None
    try:
        return _switch(client, role, timeout, started, stages)
    finally:
        if stages is not None:
            stages.close()


def _switch(
    client: GatewayClient, role: str, timeout: float, started: float, stages: _Stages | None
) -> dict[str, Any]:
    from gateway.client.api import ClientError

    # Asked once without waiting first: a wrong role or key fails at once, a role that is
    # already the loaded one needs no following, and one refused outright needs no waiting.
    status, first = client.switch(role, wait=False)
    if status != 202:
        return verdict(role, status, {"role": role, **first}, time.monotonic() - started)
    answer: list[tuple[int, dict[str, Any]]] = []
    problem: list[ClientError] = []

    def ask() -> None:
        try:
            answer.append(client.switch(role, wait=True))
        except ClientError as exc:
            problem.append(exc)

    asking = threading.Thread(target=ask, name="turnout-switch", daemon=True)
    asking.start()
    while asking.is_alive():
        if time.monotonic() - started > timeout:
            raise ClientError(f"{role} was not ready after {timeout:g} s")
        if stages is not None:
            stages.show()
        asking.join(POLL_SECONDS)
    if stages is not None:
        # The verdict and the role's last stage ("ready") come over two connections: the
        # stage may still be on its way when the verdict is in.
        stages.settle(SETTLE_SECONDS)
    if problem:
        raise problem[0]
    status, body = answer[0]
    # "from" as it was before the switch began (the second ask sees a stopping engine).
    body = {**body, "from": first.get("from")}
    return verdict(role, status, body, time.monotonic() - started)


# How long `turnout switch` waits for the event stream's first state before asking.
SUBSCRIBE_SECONDS = 2.0
# How long, once the verdict is in, it waits for the role's last stage to arrive too.
SETTLE_SECONDS = 2.0
# Stages after which a role's switch has nothing more to say.
_FINAL = frozenset(("ready", "failed"))


class _Stages:
    """The role's events from /engine/events, read on a thread of their own (a read blocks
    until the gateway sends something); a gateway without them only shows nothing."""

    def __init__(self, client: GatewayClient, role: str, report: Report, started: float) -> None:
        from gateway.client.api import ClientError

        self.role = role
        self.text = ""
        self._report = report
        self._started = started
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stream: EventStream | None = None
        try:
            self._stream = client.engine_events()
        except ClientError:
            return
        threading.Thread(target=self._read, name="turnout-events", daemon=True).start()
        # The stream starts with every role's current state, then says it is subscribed: from
        # then on no stage of the switch can be missed. Not waited for long (an older gateway).
        if not self._stream.subscribed.wait(SUBSCRIBE_SECONDS):
            self._stream.subscribed.set()

    def _read(self) -> None:
        stream = self._stream
        assert stream is not None
        for item in stream:
            # The states before the switch was asked for are not its stages.
            if stream.subscribed.is_set():
                self._queue.put(item)

    def show(self) -> None:
        """Reports each new stage of the role (a fallback's once the role falls back), and the
        latest again, so a terminal's line keeps counting the seconds."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._take(item)
        if self.text:
            self._say()

    def settle(self, seconds: float) -> None:
        """Reports what is left, waiting up to ``seconds`` for the role's final stage."""
        deadline = time.monotonic() + seconds
        while self._stream is not None and (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if self._take(item) in _FINAL:
                break
        self.show()

    def _take(self, item: dict[str, Any]) -> str | None:
        """Reports ``item`` if it is a stage of the role followed; returns that stage."""
        if item.get("role") != self.role:
            return None
        stage = item.get("stage")
        if stage == "falling back" and item.get("subject"):
            # From here on, the stages of the role that is loaded in its place.
            self.role = str(item["subject"])
        self.text = str(item.get("text") or stage or "")
        self._say()
        return str(stage) if stage is not None else None

    def _say(self) -> None:
        self._report(time.monotonic() - self._started, self.text)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def verdict(role: str, status: int, body: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The switch's answer, with ``ok`` and, when not ok, one line saying why."""
    outcome: dict[str, Any] = {**body, "elapsed_seconds": round(elapsed, 3)}
    kind = body.get("status")
    ok = status == 200 and kind == "ready" and body.get("role", role) == role
    outcome["ok"] = ok
    if not ok:
        if kind == "fallback":
            error = f"{role} cannot be loaded ({body.get('reason')}); {body.get('role')} was loaded instead"
        elif kind == "failed" and body.get("requested"):
            error = (
                f"{role} cannot be loaded ({body.get('reason')}); its fallback {body.get('role')} "
                f"failed to load: {body.get('error')}"
            )
        elif kind == "superseded":
            error = f"the switch to {role} was superseded by one to {body.get('by')}"
        else:
            error = f"{role} failed to load: {body.get('error') or kind or f'HTTP {status}'}"
        outcome["error"] = error
    return outcome


def _ask(client: GatewayClient, role: str, as_json: bool) -> int:
    status, body = client.switch(role, wait=False)
    if status == 503:
        outcome = verdict(role, status, body, 0.0)
        if as_json:
            emit_json(outcome)
        return fail(outcome["error"])
    if as_json:
        emit_json({"ok": True, **body})
    elif status == 200:
        print(f"{role} is already loaded")
    elif body.get("requested"):
        print(
            f"{role} cannot be loaded ({body.get('reason')}); switching to {body.get('to')} instead"
        )
    else:
        print(f"switching to {role} (from {body.get('from') or 'nothing'})")
    return 0


class StatePrinter:
    """Prints the stages as a switch goes: a line per stage; on a terminal the current line
    also counts the seconds, so a long load visibly moves."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.seen: str | None = None

    def __call__(self, elapsed: float, stage: str) -> None:
        text = f"{elapsed:6.1f}s  {stage}"
        changed = stage != self.seen
        if self.live:
            self.out.write(("\n" if changed and self.seen is not None else "\r") + text)
        elif changed:
            self.out.write(text + "\n")
        self.out.flush()
        self.seen = stage

    def close(self) -> None:
        if self.live and self.seen is not None:
            self.out.write("\n")
            self.out.flush()
        self.seen = None
