"""``turnout`` command line: ``serve``, ``check`` and ``usage``.

Imports stay lazy so ``turnout check`` and ``--help`` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "routing.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnout", description="An OpenAI-compatible LLM gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config", default=DEFAULT_CONFIG, help="routing file (default: ./routing.yaml)"
    )
    serve.add_argument(
        "--host", default=None, help="bind address (default: server.host, 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=None, help="port (default: server.port, 8080)")
    serve.add_argument("--log-level", default=None, help="debug, info, warning, error")

    check = commands.add_parser("check", help="validate a routing file and exit")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)

    usage = commands.add_parser(
        "usage", help="show the usage log of a running gateway (GET /v1/usage)"
    )
    usage.add_argument(
        "--url",
        default=os.environ.get("TURNOUT_URL", "http://127.0.0.1:8080"),
        help="the gateway (default: $TURNOUT_URL or http://127.0.0.1:8080)",
    )
    usage.add_argument(
        "--key",
        default=os.environ.get("TURNOUT_ADMIN_KEY", ""),
        help="admin key (default: $TURNOUT_ADMIN_KEY)",
    )
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

    from gateway import keys_cli

    keys_cli.add_parser(commands)

    args = parser.parse_args(argv)
    if args.command == "keys":
        return keys_cli.run(args)
    if args.command == "check":
        return _check(Path(args.config))
    if args.command == "usage":
        return _usage(args)
    return _serve(args)


def _check(path: Path) -> int:
    from gateway.config import ConfigError, load, warnings

    try:
        config = load(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from gateway.engines.process import missing_parts

    for note in warnings(config):
        print(f"warning: {note}", file=sys.stderr)
    for name, role in config.roles.items():
        problem = missing_parts(role)
        if problem:
            print(f"warning: roles.{name}: cannot start until fixed: {problem}", file=sys.stderr)
    print(
        f"{path}: ok ({len(config.providers)} providers, {len(config.roles)} roles, {len(config.models)} models)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load
    from gateway.server import run

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return run(config, host=args.host, port=args.port, log_level=args.log_level)


def _usage(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request
    from datetime import datetime

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
    request = urllib.request.Request(f"{args.url.rstrip('/')}/v1/usage?{query}")
    if args.key:
        request.add_header("Authorization", f"Bearer {args.key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        print(f"error: {exc.code} from {args.url}: {detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach turnout at {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        sys.stdout.write(body)
    elif args.json:
        print(json.dumps(json.loads(body), indent=2))
    else:
        report = json.loads(body)
        groups = [g for g in (args.group_by or "").split(",") if g.strip()]
        print(_usage_table(report, [g.strip() for g in groups]))
    return 0


def _usage_table(report: dict[str, Any], groups: list[str]) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
