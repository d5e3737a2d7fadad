"""``turnout keys create|list|revoke``: manage virtual keys in the gateway's database.

Works on the database file itself, so it needs no running gateway; a running one picks the
change up within seconds (see ``gateway/keys.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.config.schema import Limits


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="manage virtual API keys")
    _options(keys, "routing.yaml", False)
    # The same options after the action too (`turnout keys create --config X`); SUPPRESS
    # there, so an action that does not repeat them keeps what came before it.
    after = argparse.ArgumentParser(add_help=False)
    _options(after, argparse.SUPPRESS, argparse.SUPPRESS)
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", parents=[after], help="create a key (its secret is shown once)"
    )
    create.add_argument("--name", required=True)
    create.add_argument(
        "--agent", required=True, help="agent id requests with this key are logged as"
    )
    create.add_argument(
        "--models", default="", help="comma-separated model names or globs (default: all)"
    )
    create.add_argument("--rpm", type=int, default=None)
    create.add_argument("--tpm", type=int, default=None)
    create.add_argument("--concurrent", type=int, default=None)
    create.add_argument(
        "--budget", type=float, default=None, help="USD; requests beyond it are refused"
    )
    create.add_argument(
        "--trusted", action="store_true", help="may act for other agents (X-Agent-Id)"
    )
    listing = actions.add_parser("list", parents=[after], help="list keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = actions.add_parser("revoke", parents=[after], help="revoke a key by id or name")
    revoke.add_argument("key")


def _options(parser: argparse.ArgumentParser, config: str, as_json: bool | str) -> None:
    parser.add_argument("--config", default=config, help="routing file naming the database")
    parser.add_argument(
        "--json", action="store_true", default=as_json, help="machine-readable output"
    )


def run(args: argparse.Namespace) -> int:
    from gateway.config.loading import load
    from gateway.errors import ConfigError
    from gateway.keys import connect, create_key, list_keys, revoke_key

    try:
        database = load(args.config).server.database
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    connection = connect(database)
    try:
        if args.action == "create":
            limits = None
            if any(v is not None for v in (args.rpm, args.tpm, args.concurrent)):
                limits = Limits(
                    rpm=args.rpm or 0, tpm=args.tpm or 0, concurrent=args.concurrent or 0
                )
            models = tuple(m.strip() for m in args.models.split(",") if m.strip())
            secret, record = create_key(
                connection, args.name, args.agent, models, limits, args.budget, args.trusted
            )
            if args.json:
                print(
                    json.dumps(
                        {
                            "id": record.id,
                            "name": record.name,
                            "agent_id": record.agent_id,
                            "key": secret,
                        }
                    )
                )
            else:
                print(f"created key {record.id} ({record.name}) for agent {record.agent_id}")
                print(f"secret (shown once): {secret}")
            return 0
        if args.action == "revoke":
            if revoke_key(connection, args.key):
                print(f"revoked {args.key}")
                return 0
            print(f"error: no active key with id or name {args.key!r}", file=sys.stderr)
            return 1
        records = list_keys(connection, include_revoked=args.all)
        if args.json:
            print(json.dumps([_row(r) for r in records]))
            return 0
        header = f"{'id':<12} {'name':<20} {'agent':<16} {'models':<20} {'rpm':>6} {'tpm':>8} {'conc':>5} {'budget':>8} state"
        print(header)
        for r in records:
            limits = r.limits or Limits()
            budget = f"{r.budget_usd:.2f}" if r.budget_usd is not None else "-"
            state = "revoked" if r.revoked_at else "active"
            print(
                f"{r.id:<12} {r.name[:20]:<20} {r.agent_id[:16]:<16} {','.join(r.allowed_models)[:20] or '*':<20} "
                f"{limits.rpm or '-':>6} {limits.tpm or '-':>8} {limits.concurrent or '-':>5} {budget:>8} {state}"
            )
        return 0
    finally:
        connection.close()


def _row(record: object) -> dict[str, object]:
    from gateway.keys import KeyRecord

    assert isinstance(record, KeyRecord)
    limits = record.limits
    return {
        "id": record.id,
        "name": record.name,
        "agent_id": record.agent_id,
        "allowed_models": list(record.allowed_models),
        "rpm": limits.rpm if limits else None,
        "tpm": limits.tpm if limits else None,
        "concurrent": limits.concurrent if limits else None,
        "budget_usd": record.budget_usd,
        "trusted": record.trusted,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created_at)),
        "revoked": record.revoked_at is not None,
    }
