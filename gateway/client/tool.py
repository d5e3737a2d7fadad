"""``turnout tool <id> '<json args>'``: run one of the gateway's tools (POST /v1/tools/call).

Without an id it lists the tools (GET /v1/tools).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.client.output import emit_json, fail, one_line, table


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "tool",
        parents=[common],
        help="call a tool of a running gateway (no id: list the tools)",
        description='Call a tool: turnout tool get_weather \'{"city": "Paris"}\'. '
        "Exits 1 when the tool answers ok=false.",
    )
    parser.add_argument("id", nargs="?", help="the tool to call; omit to list the tools")
    parser.add_argument(
        "arguments", nargs="?", default="{}", help="a JSON object ('-': read it from stdin)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.client.api import ClientError, GatewayClient
    from gateway.client.settings import SettingsError, from_args

    try:
        arguments = _arguments(sys.stdin.read() if args.arguments == "-" else args.arguments)
    except ValueError as exc:
        return fail(str(exc), 2)
    try:
        settings = from_args(args)
        client = GatewayClient(
            settings.url, key=settings.api_key, admin_key=settings.admin, timeout=args.timeout
        )
        if args.id is None:
            return _list(client.tools(), args.json)
        outcome = client.call_tool(args.id, arguments)
    except (ClientError, SettingsError) as exc:
        return fail(str(exc))
    if args.json:
        emit_json(outcome.raw)
    elif outcome.ok:
        result = outcome.result
        print(result if isinstance(result, str) else json.dumps(result, indent=2))
    if not outcome.ok:
        return fail(f"tool {args.id} failed: {outcome.error or 'no reason given'}")
    return 0


def _arguments(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError as exc:
        raise ValueError(f"the arguments are not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('the arguments must be a JSON object, like \'{"city": "Paris"}\'')
    return value


def _list(answer: Any, as_json: bool) -> int:
    if as_json:
        emit_json(answer)
        return 0
    tools = answer.get("data", answer.get("tools")) if isinstance(answer, dict) else answer
    if not isinstance(tools, list):
        print(json.dumps(answer, indent=2))
        return 0
    if not tools:
        print("no tools (see plugins: in routing.yaml)")
        return 0
    rows = [_row(t) for t in tools]
    print(table(("TOOL", "DESCRIPTION"), rows, indent=""))
    return 0


def _row(tool: Any) -> tuple[str, str]:
    if not isinstance(tool, dict):
        return str(tool), ""
    function = tool.get("function")
    if not isinstance(function, dict):
        function = {}
    name = tool.get("id") or tool.get("name") or function.get("name") or "?"
    about = tool.get("description") or function.get("description") or ""
    return str(name), one_line(str(about), 100)
