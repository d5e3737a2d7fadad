"""``turnout`` command line: ``serve`` and ``check``.

Imports stay lazy so ``turnout check`` and ``--help`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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

    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(Path(args.config))
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


if __name__ == "__main__":
    sys.exit(main())
