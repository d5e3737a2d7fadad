"""``turnout`` command line: ``serve``, ``check`` and ``keys`` here; the commands that talk to
a running gateway (``chat``, ``status``, ``models``, ``switch``, ``tool``, ``usage``, ``batch``)
live in ``gateway/client/``, one module each.

Imports stay lazy so ``turnout --help`` and every command start fast: building the parsers
imports only the command modules, which import their HTTP client and the rest when they run.
``serve`` skips even that: it parses with its own parser alone (see ``main``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "routing.yaml"


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["serve"]:
        # What a service manager starts, and how soon it answers /health is measured (issue 13):
        # building every command's parser imports the client modules, 30-45 ms on the bench
        # machine. The same parser as `turnout serve` below, so usage and errors read alike.
        serve = argparse.ArgumentParser(prog="turnout serve", description=SERVE_HELP)
        _serve_arguments(serve)
        return _serve(serve.parse_args(given[1:]))
    parser = argparse.ArgumentParser(
        prog="turnout",
        description="An OpenAI-compatible LLM gateway: run it (serve), check its routing file, "
        "manage its keys, and talk to a running one (chat, status, models, switch, tool, "
        "usage, batch) or start a coding agent pointed at one (launch; --url/--key, "
        "$TURNOUT_URL/$TURNOUT_API_KEY or ~/.config/turnout/cli.toml).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _serve_arguments(commands.add_parser("serve", help=SERVE_HELP, description=SERVE_HELP))

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
    from gateway.imports import command as import_command

    import_command.add_parser(commands)

    own, passthrough = launch.split_passthrough(given)
    args = parser.parse_args(own)
    if passthrough:
        args.client_args = passthrough
    if args.command == "serve":
        return _serve(args)
    try:
        code = _dispatch(args)
        # Written now, while a reader that left can still be told apart from a failure;
        # at exit the interpreter would print the BrokenPipeError instead.
        sys.stdout.flush()
    except KeyboardInterrupt:
        # Commands handle Ctrl-C where it means something (a reply, a batch); anywhere else
        # it just ends the command, without a traceback.
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `turnout keys --json list | head`: the reader left; say nothing more. What is still
        # buffered goes nowhere, so flushing it at exit fails no more (Python's own advice).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "keys":
        from gateway import keys_cli

        return keys_cli.run(args)
    if args.command == "check":
        return _check(Path(args.config), as_json=args.json)
    code: int = args.handler(args)
    return code


SERVE_HELP = "run the gateway"


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--config", default=DEFAULT_CONFIG, help="routing file (default: ./routing.yaml)"
    )
    serve.add_argument(
        "--host", default=None, help="bind address (default: server.host, 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=None, help="port (default: server.port, 8080)")
    serve.add_argument("--log-level", default=None, help="debug, info, warning, error")


def _check(path: Path, *, as_json: bool = False) -> int:
    """Every start-up check ``serve`` runs (gateway/preflight.py), without serving."""
    import json

    from gateway.config.loading import load
    from gateway.config.validation import warnings
    from gateway.errors import ConfigError
    from gateway.preflight import preflight

    try:
        config = load(path)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "path": str(path), "error": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verdict = preflight(config)
    notes = [*warnings(config), *verdict.notes]
    if verdict.errors:
        message = f"{path}: " + "; ".join(verdict.errors)
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
    """Serves after the start-up checks; a configuration problem is one line and exit 2."""
    from gateway.config.loading import load
    from gateway.errors import ConfigError
    from gateway.preflight import preflight
    from gateway.server import run

    try:
        config = load(args.config)
        verdict = preflight(config, args.host)
        if verdict.wiring is None:
            raise ConfigError(f"{args.config}: " + "; ".join(verdict.errors))
        return run(config, verdict.wiring, host=args.host, port=args.port, log_level=args.log_level)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
