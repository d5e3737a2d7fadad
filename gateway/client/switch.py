"""``turnout switch <role>``: load a local role and show its progress until it is ready.

The switch is asked once without waiting (a wrong role fails at once), then with
``?wait=true`` on a helper thread: that answer is the verdict (ready, failed, fallback or
superseded), exact even when the start fails or another switch wins.
Meanwhile the main thread polls ``/engine/health`` and prints each change of state, so a slow
load shows that it is moving. ``--no-wait`` asks and returns.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from gateway.client.output import emit_json, fail

if TYPE_CHECKING:
    from gateway.client.api import GatewayClient

POLL_SECONDS = 0.2


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "switch",
        parents=[common],
        help="load a local role (hot-swap) and show progress until it is ready",
        description="POST /engine/switch/<role>, then follow /engine/health until the role is "
        "ready (exit 0) or cannot be loaded (exit 1).",
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
    client: GatewayClient,
    role: str,
    timeout: float,
    report: Callable[[float, str, str | None], None] | None,
) -> dict[str, Any]:
    """Switch to ``role`` and wait for the verdict; ``report(elapsed, state, role)`` after each
    poll of /engine/health. Raises ``ClientError`` when the gateway refuses the switch."""
    from gateway.client.api import ClientError

    started = time.monotonic()
    # Asked once without waiting first: a wrong role or key fails at once, and a role that is
    # already the loaded one needs no following.
    status, first = client.switch(role, wait=False)
    if status == 200:
        return verdict(role, 200, {"role": role, **first}, time.monotonic() - started)
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
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise ClientError(f"{role} was not ready after {timeout:g} s")
        try:
            health = client.engine_health()
        except ClientError:
            health = None  # the verdict (or its error) arrives on the other thread
        if health is not None and report is not None:
            report(elapsed, health.state, health.role)
        asking.join(POLL_SECONDS)
    if problem:
        raise problem[0]
    status, body = answer[0]
    # "from" as it was before the switch began (the second ask sees a stopping engine).
    body = {**body, "from": first.get("from")}
    return verdict(role, status, body, time.monotonic() - started)


def verdict(role: str, status: int, body: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The switch's answer, with ``ok`` and, when not ok, one line saying why."""
    outcome: dict[str, Any] = {**body, "elapsed_seconds": round(elapsed, 3)}
    kind = body.get("status")
    ok = status == 200 and kind == "ready" and body.get("role", role) == role
    outcome["ok"] = ok
    if not ok:
        if kind == "fallback":
            error = f"{role} cannot be loaded ({body.get('reason')}); {body.get('role')} was loaded instead"
        elif kind == "superseded":
            error = f"the switch to {role} was superseded by one to {body.get('by')}"
        else:
            error = f"{role} failed to load: {body.get('error') or kind or f'HTTP {status}'}"
        outcome["error"] = error
    return outcome


def _ask(client: GatewayClient, role: str, as_json: bool) -> int:
    status, body = client.switch(role, wait=False)
    if as_json:
        emit_json({"ok": True, **body})
    elif status == 200:
        print(f"{role} is already loaded")
    else:
        print(f"switching to {role} (from {body.get('from') or 'nothing'})")
    return 0


class StatePrinter:
    """Prints the engine's state as a switch goes: a line per change of state; on a terminal
    the current line also counts the seconds, so a long load visibly moves."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.seen: tuple[str, str | None] | None = None

    def __call__(self, elapsed: float, state: str, role: str | None) -> None:
        text = f"{elapsed:6.1f}s  {state}" + (f" ({role})" if role else "")
        changed = (state, role) != self.seen
        if self.live:
            self.out.write(("\n" if changed and self.seen is not None else "\r") + text)
        elif changed:
            self.out.write(text + "\n")
        self.out.flush()
        self.seen = (state, role)

    def close(self) -> None:
        if self.live and self.seen is not None:
            self.out.write("\n")
            self.out.flush()
        self.seen = None
