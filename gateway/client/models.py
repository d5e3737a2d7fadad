"""``turnout models``: the logical models a running gateway serves (GET /v1/models)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.client.output import emit_json, fail, one_line, table


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "models",
        parents=[common],
        help="list the models of a running gateway, with aliases and availability",
        description="List GET /v1/models: each logical model, its aliases, whether any of its "
        "targets is available, and why not.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.client.api import ClientError, GatewayClient
    from gateway.client.settings import SettingsError, from_args

    try:
        settings = from_args(args)
        client = GatewayClient(settings.url, key=settings.api_key, admin_key=settings.admin)
        answer = client.get("/v1/models")
    except (ClientError, SettingsError) as exc:
        return fail(str(exc))
    if args.json:
        emit_json(answer)
    else:
        print(listing(answer.get("data") or []))
    return 0


def listing(data: list[dict[str, Any]]) -> str:
    models = [m for m in data if not m.get("alias_of")]
    if not models:
        return "no models (see models: in routing.yaml)"
    rows = [
        (
            m.get("id"),
            "yes" if m.get("available") else "no",
            ", ".join(m.get("aliases") or []),
            one_line(", ".join(_target(t) for t in m.get("targets") or []), 100),
        )
        for m in models
    ]
    return table(("MODEL", "AVAILABLE", "ALIASES", "TARGETS"), rows, indent="")


def _target(target: dict[str, Any]) -> str:
    name = f"{target.get('provider')}/{target.get('model')}"
    if target.get("available"):
        return name
    return f"{name} (unavailable: {target.get('detail')})" if target.get("detail") else name
