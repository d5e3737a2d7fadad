"""``turnout`` command line: ``serve``, ``check`` and ``keys`` here; the commands that talk to
a running gateway (``chat``, ``status``, ``models``, ``switch``, ``tool``, ``usage``, ``batch``)
live in ``gateway/client/``, one module each.

Imports stay lazy so ``turnout --help`` and every command start fast: building the parsers
imports only the command modules, which import their HTTP client and the rest when they run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = "routing.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="turnout",
        description="An OpenAI-compatible LLM gateway: run it (serve), check its routing file, "
        "manage its keys, and talk to a running one (chat, status, models, switch, tool, "
        "usage, batch) or start a coding agent pointed at one (launch; --url/--key, "
        "$TURNOUT_URL/$TURNOUT_API_KEY or ~/.config/turnout/cli.toml).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    check.add_argument("--json", action="store_true", help="print the verdict as JSON")

    # The client commands: each module adds its parser; its run() imports what it needs.
    from gateway.client import batch, chat, models, status, switch, tool, usage
    from gateway.client.settings import add_arguments

    common = argparse.ArgumentParser(add_help=False)
    add_arguments(common)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    for command in (chat, status, models, switch, tool):
        command.add_parser(commands, common)
    usage.add_parser(commands)
    batch.add_parser(commands, common)

    from gateway import keys_cli, launch

    keys_cli.add_parser(commands)
    launch.add_parser(commands)

    own, passthrough = launch.split_passthrough(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    if passthrough:
        args.client_args = passthrough
    if args.command == "keys":
        return keys_cli.run(args)
    if args.command == "check":
        return _check(Path(args.config), as_json=args.json)
    if args.command == "serve":
        return _serve(args)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        # Commands handle Ctrl-C where it means something (a reply, a batch); anywhere else
        # it just ends the command, without a traceback.
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `turnout models | head`: the reader left; say nothing more.
        sys.stderr.close()
        return 141
    return code


def _check(path: Path, *, as_json: bool = False) -> int:
    import json

    from gateway.config import load, warnings
    from gateway.errors import ConfigError

    try:
        config = load(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "path": str(path), "error": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from gateway.engines.registry import kinds_for

    kinds = kinds_for(config)
    notes = list(warnings(config))
    errors: list[str] = []
    for name, role in config.roles.items():
        problem = kinds.missing_parts(role)
        if problem.startswith("model "):
            # The engine is installed, so this role is meant to run here, and its first request
            # would fail. (Without the engine, e.g. the shipped example on a fresh machine, the
            # role just reports itself unavailable: a warning.)
            errors.append(f"roles.{name}.model: file {role.model!r} does not exist")
        elif problem:
            notes.append(f"roles.{name}: cannot start until fixed: {problem}")
    if errors:
        message = f"{path}: " + "; ".join(errors)
        if as_json:
            print(json.dumps({"ok": False, "path": str(path), "error": message}))
        print(f"error: {message}", file=sys.stderr)
        return 1
    counts = {
        "providers": len(config.providers),
        "roles": len(config.roles),
        "models": len(config.models),
    }
    if as_json:
        print(json.dumps({"ok": True, "path": str(path), **counts, "warnings": notes}))
        return 0
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(
        f"{path}: ok ({counts['providers']} providers, {counts['roles']} roles, {counts['models']} models)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gateway.config import load
    from gateway.errors import ConfigError
    from gateway.server import run

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return run(config, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
