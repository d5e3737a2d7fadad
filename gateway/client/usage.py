"""``turnout usage``: the usage log of a running gateway (GET /v1/usage) as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(commands: Any) -> None:
    from gateway.client.settings import add_arguments

    usage = commands.add_parser(
        "usage", help="show the usage log of a running gateway (GET /v1/usage)"
    )
    # The same --url/--key/--admin-key as every client command: --key is the API key there,
    # --admin-key the admin key /v1/usage needs (issue 16: here --key once meant the admin key).
    add_arguments(usage)
    usage.add_argument("--agent", help="only this agent")
    usage.add_argument("--model", help="only this logical model")
    usage.add_argument("--key-id", help="only this virtual key")
    usage.add_argument("--project", help="only this project")
    usage.add_argument(
        "--since", help="from: an age (90m, 24h, 7d), unix seconds or ISO 8601 (local time)"
    )
    usage.add_argument("--until", help="until, in the same forms as --since")
    usage.add_argument(
        "--group-by",
        help="comma-separated: agent, model, key, project, channel, provider, day, hour",
    )
    usage.add_argument("--limit", type=int, help="most rows or groups (0: all; default 1000)")
    output = usage.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print CSV")
    output.add_argument("--json", action="store_true", help="print the JSON answer")
    usage.set_defaults(handler=run)


DEPRECATED_KEY = (
    "warning: `turnout usage --key` is deprecated: it means the API key in every command, and "
    "/v1/usage needs the admin key: pass it as --admin-key (used as the admin key this time)"
)


def run(args: argparse.Namespace) -> int:
    import json
    import urllib.parse
    from datetime import datetime

    from gateway.client.api import ClientError, GatewayClient
    from gateway.client.output import fail
    from gateway.client.settings import SettingsError, resolve

    def moment(text: str | None) -> str | None:
        # A bare ISO time means the user's local time; the server would read it as UTC.
        try:
            parsed = datetime.fromisoformat(text or "")
        except ValueError:
            return text
        return str(parsed.timestamp()) if parsed.tzinfo is None else text

    filters = {
        "agent": args.agent,
        "model": args.model,
        "key": args.key_id,
        "project": args.project,
        "since": moment(args.since),
        "until": moment(args.until),
        "group_by": args.group_by,
        "limit": args.limit,
        "format": "csv" if args.csv else None,
    }
    query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
    admin_key = args.admin_key
    if args.key and not admin_key:
        # What `usage --key` did before the flags matched the other commands: still honoured
        # (it wins over $TURNOUT_ADMIN_KEY as it did), with a line saying what to write now.
        print(DEPRECATED_KEY, file=sys.stderr)
        admin_key = args.key
    try:
        # --model filters the log here; it is not a default model, so it is not passed on.
        settings = resolve({"url": args.url, "key": args.key, "admin_key": admin_key})
        client = GatewayClient(
            settings.url, key=settings.api_key, admin_key=settings.admin, timeout=60
        )
        body = client.get_text(f"/v1/usage?{query}", admin=True)
    except (ClientError, SettingsError) as exc:
        return fail(str(exc))
    if args.csv:
        sys.stdout.write(body)
    elif args.json:
        print(json.dumps(json.loads(body), indent=2))
    else:
        report = json.loads(body)
        groups = [g for g in (args.group_by or "").split(",") if g.strip()]
        print(usage_table(report, [g.strip() for g in groups]))
    return 0


def usage_table(report: dict[str, Any], groups: list[str]) -> str:
    """The JSON answer as aligned columns (numbers right-aligned), then one line of totals."""
    from datetime import datetime

    def cost(value: float | None) -> str:
        return "-" if value is None else f"${value:.4f}"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    def count(value: int) -> str:
        return f"{value:,}"

    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")

    def text(value: object) -> str:
        return "-" if value is None else str(value)

    # (title, field, how to show it)
    columns: list[tuple[str, str, Any]] = [(g, g, text) for g in groups]
    if groups:
        columns += [
            ("requests", "requests", count),
            ("errors", "errors", count),
            ("prompt", "prompt_tokens", count),
            ("completion", "completion_tokens", count),
            ("cached", "cached_tokens", count),
            ("cost", "cost_usd", cost),
            ("p50 ms", "latency_ms_p50", ms),
            ("p95 ms", "latency_ms_p95", ms),
        ]
    else:
        columns += [
            ("time", "ts", when),
            ("agent", "agent_id", text),
            ("model", "model", text),
            ("provider", "provider", text),
            ("status", "status", text),
            ("prompt", "prompt_tokens", count),
            ("completion", "completion_tokens", count),
            ("cost", "cost_usd", cost),
            ("ms", "duration_ms", ms),
            ("ttft ms", "ttft_ms", ms),
            ("notes", "notes", text),
        ]
    cells = [[title for title, _, _ in columns]]
    cells += [[show(row[field]) for _, field, show in columns] for row in report["data"]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    right = [show in (count, cost, ms) for _, _, show in columns]
    lines = [
        "  ".join(
            cell.rjust(width) if numeric else cell.ljust(width)
            for cell, width, numeric in zip(row, widths, right, strict=True)
        ).rstrip()
        for row in cells
    ]
    totals = report["totals"]
    lines.append(
        f"\n{count(totals['requests'])} requests, {count(totals['errors'])} errors, "
        f"{count(totals['prompt_tokens'])} prompt + {count(totals['completion_tokens'])} "
        f"completion tokens ({count(totals['cached_tokens'])} cached), "
        f"cost {cost(totals['cost_usd'])}, latency p50 {ms(totals['latency_ms_p50'])} ms, "
        f"p95 {ms(totals['latency_ms_p95'])} ms"
    )
    return "\n".join(lines)
