"""``turnout status``: what the gateway's engines and providers are doing (GET /engine/status)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.client.output import duration, emit_json, fail, one_line, table


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "status",
        parents=[common],
        help="engines, loaded role, queue, providers and recent errors of a running gateway",
        description="Summarise GET /engine/status of a running gateway (needs the admin key "
        "when the gateway has one).",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.client.api import ClientError, GatewayClient
    from gateway.client.settings import SettingsError, from_args

    try:
        settings = from_args(args)
        client = GatewayClient(settings.url, key=settings.api_key, admin_key=settings.admin)
        status = client.engine_status()
    except (ClientError, SettingsError) as exc:
        return fail(str(exc))
    if args.json:
        emit_json(status)
    else:
        print(summary(status, settings.url))
    return 0


def summary(status: dict[str, Any], url: str) -> str:
    engines: dict[str, Any] = status.get("engines") or {}
    queue: dict[str, int] = status.get("queue") or {}
    lines = [f"gateway   {url}"]
    loaded = ", ".join(status.get("loaded") or []) or "none"
    state = f"engine    {status.get('state', '-')}, loaded: {loaded}"
    if status.get("switching_to"):
        state += f", switching to {status['switching_to']}"
    lines.append(state)
    lines.append(f"queue     {sum(queue.values())} waiting" + _per_role(queue))
    if engines:
        lines += ["", "roles"]
        rows = [
            (
                name,
                e.get("state"),
                e.get("engine"),
                e.get("pid"),
                duration(e.get("uptime_seconds")),
                e.get("inflight"),
                e.get("queue"),
                one_line(str(e["last_error"]), 80) if e.get("last_error") else None,
            )
            for name, e in engines.items()
        ]
        headers = ("ROLE", "STATE", "ENGINE", "PID", "UPTIME", "INFLIGHT", "QUEUE", "LAST ERROR")
        lines.append(table(headers, rows))
    providers: dict[str, Any] = status.get("providers") or {}
    if providers:
        lines += ["", "providers"]
        provider_rows = [
            (
                name,
                p.get("kind"),
                "local" if p.get("local") else "remote",
                "yes" if p.get("available") else "no",
                one_line(str(p.get("detail") or ""), 80),
            )
            for name, p in providers.items()
        ]
        columns = ("PROVIDER", "KIND", "WHERE", "AVAILABLE", "DETAIL")
        lines.append(table(columns, provider_rows))
    errors = recent_errors(status)
    lines += ["", "recent errors" if errors else "recent errors: none"]
    lines += [f"  {where}: {one_line(message)}" for where, message in errors]
    return "\n".join(lines)


def recent_errors(status: dict[str, Any]) -> list[tuple[str, str]]:
    """The last error of each engine and of each target still failing."""
    found = [
        (f"role {name}", str(e["last_error"]))
        for name, e in (status.get("engines") or {}).items()
        if e.get("last_error")
    ]
    for key, target in (status.get("targets") or {}).items():
        if not target.get("last_error"):
            continue
        if target.get("cooling_down"):
            note = " (cooling down)"
        elif not target.get("consecutive_failures"):
            note = " (recovered since)"
        else:
            note = ""
        found.append((f"target {key}{note}", str(target["last_error"])))
    return found


def _per_role(queue: dict[str, int]) -> str:
    busy = [f"{role} {depth}" for role, depth in queue.items() if depth]
    return f" ({', '.join(busy)})" if busy else ""
