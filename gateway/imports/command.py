"""``turnout import {litellm,llama-swap} CONFIG``: write a routing.yaml from another gateway's
config and say what could not be mapped.

The routing file goes to ``-o FILE`` (never over an existing file without ``--force``) or to
stdout; the report goes to stderr when the file goes to stdout, so ``> routing.yaml`` works.
An input that cannot be read or is not that tool's config is one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import NotAConfig
from gateway.imports.report import Imported, render, report_lines

TOOLS = ("litellm", "llama-swap")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "import",
        help="write a routing.yaml from a LiteLLM or llama-swap config",
        description="Map a LiteLLM proxy config.yaml or a llama-swap config.yaml to a commented "
        "routing.yaml, and list what could not be mapped. Check the result with turnout check.",
    )
    parser.add_argument("tool", choices=TOOLS, help="whose config it is")
    parser.add_argument("config", help="the config file to import")
    parser.add_argument(
        "-o", "--output", default="-", help="the routing file to write (default: stdout)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    parser.set_defaults(handler=run)


def importer(tool: str) -> Callable[[Any], Imported]:
    if tool == "litellm":
        from gateway.imports.litellm import from_litellm

        return from_litellm
    from gateway.imports.llama_swap import from_llama_swap

    return from_llama_swap


def run(args: argparse.Namespace) -> int:
    import yaml

    source = Path(args.config)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
        imported = importer(args.tool)(raw)
    except OSError as exc:
        return _fail(f"{source}: cannot read: {exc.strerror}")
    except yaml.YAMLError as exc:
        return _fail(f"{source}: not valid YAML: {' '.join(str(exc).split())}")
    except NotAConfig as exc:
        return _fail(f"{source}: {exc}")
    text = render(imported, source.name, f"turnout import {args.tool} {source.name}")
    report = sys.stderr
    if args.output == "-":
        sys.stdout.write(text)
    else:
        target = Path(args.output)
        if target.exists() and not args.force:
            return _fail(f"{target} exists; pass --force to overwrite it")
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            return _fail(f"{target}: cannot write: {exc.strerror}")
        report = sys.stdout
        print(f"wrote {target}; check it with: turnout check {target}", file=report)
    for line in report_lines(imported):
        print(line, file=report)
    if problem := _refusal(imported):
        print(f"warning: turnout check will refuse it until fixed: {problem}", file=report)
    if not imported.unmapped:
        print("everything was mapped", file=report)
    return 0


def _refusal(imported: Imported) -> str:
    """Why the routing file would not load here (with this environment), or ''."""
    from gateway.config.loading import from_mapping
    from gateway.errors import ConfigError
    from gateway.imports.report import document

    try:
        from_mapping(document(imported), "routing.yaml")
    except ConfigError as exc:
        return str(exc)
    return ""


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
