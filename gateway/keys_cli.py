"""``turnout keys create|list|revoke|budget|budgets``: manage virtual keys and project budgets.

By default works on the database file itself, so it needs no running gateway; a running one
picks the change up within seconds (see ``gateway/keys.py``). With ``--url`` it asks a running
gateway's admin API instead (``/v1/keys``, ``/v1/budgets``), with the admin key (``--admin-key``,
``$TURNOUT_ADMIN_KEY`` or the CLI config file): no shell in the gateway's container needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.periods import PERIODS

if TYPE_CHECKING:
    from gateway.keys_stores import KeyStore


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="manage virtual API keys and budgets")
    _options(keys, "routing.yaml", False, None)
    # The same options after the action too (`turnout keys create --config X`); SUPPRESS
    # there, so an action that does not repeat them keeps what came before it.
    after = argparse.ArgumentParser(add_help=False)
    _options(after, argparse.SUPPRESS, argparse.SUPPRESS, argparse.SUPPRESS)
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
    _period(create)
    create.add_argument(
        "--trusted", action="store_true", help="may act for other agents (X-Agent-Id)"
    )
    listing = actions.add_parser("list", parents=[after], help="list keys with their spend")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = actions.add_parser("revoke", parents=[after], help="revoke a key by id or name")
    revoke.add_argument("key")
    budget = actions.add_parser(
        "budget",
        parents=[after],
        help="set (or --remove) the budget of a project (metadata.microdao_id, X-Project-Id)",
    )
    budget.add_argument("project")
    amount = budget.add_mutually_exclusive_group(required=True)
    amount.add_argument("--budget", type=float, help="USD")
    amount.add_argument("--remove", action="store_true", help="remove the project's budget")
    _period(budget)
    actions.add_parser("budgets", parents=[after], help="list project budgets with their spend")


def _options(
    parser: argparse.ArgumentParser, config: str, as_json: bool | str, unset: str | None
) -> None:
    parser.add_argument("--config", default=config, help="routing file naming the database")
    parser.add_argument(
        "--json", action="store_true", default=as_json, help="machine-readable output"
    )
    parser.add_argument(
        "--url", default=unset, help="a running gateway: use its admin API, not the database file"
    )
    parser.add_argument(
        "--admin-key",
        default=unset,
        help="with --url: the admin key (default: $TURNOUT_ADMIN_KEY or the CLI config file)",
    )


def _period(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--period", choices=PERIODS, default=None, help="reset the budget each UTC day/week/month"
    )


def run(args: argparse.Namespace) -> int:
    from gateway.errors import StoreError

    try:
        store = _store(args)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return _act(store, args)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _store(args: argparse.Namespace) -> KeyStore:
    from gateway.errors import StoreError
    from gateway.keys_stores import DatabaseStore, GatewayStore

    if args.url:
        from gateway.client.api import GatewayClient
        from gateway.client.settings import SettingsError, resolve

        try:
            settings = resolve({"url": args.url, "admin_key": args.admin_key})
        except SettingsError as exc:
            raise StoreError(str(exc)) from None
        return GatewayStore(GatewayClient(settings.url, admin_key=settings.admin))
    from gateway.config.loading import load
    from gateway.errors import ConfigError

    try:
        return DatabaseStore(load(args.config).server.database)
    except ConfigError as exc:
        raise StoreError(str(exc)) from None


def _act(store: KeyStore, args: argparse.Namespace) -> int:
    if args.action == "create":
        created = store.create(_new_key(args))
        if args.json:
            print(json.dumps({k: created[k] for k in ("id", "name", "agent_id", "key")}))
        else:
            print(
                f"created key {created['id']} ({created['name']}) for agent {created['agent_id']}"
            )
            print(f"secret (shown once): {created['key']}")
        return 0
    if args.action == "revoke":
        if store.revoke(args.key):
            print(f"revoked {args.key}")
            return 0
        print(f"error: no active key with id or name {args.key!r}", file=sys.stderr)
        return 1
    if args.action == "budget":
        return _budget(store, args)
    if args.action == "budgets":
        budgets = store.budgets()
        print(json.dumps(budgets) if args.json else _budget_table(budgets))
        return 0
    keys = store.keys(args.all)
    print(json.dumps(keys) if args.json else _key_table(keys))
    return 0


def _new_key(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": args.name,
        "agent": args.agent,
        "models": [m.strip() for m in args.models.split(",") if m.strip()],
        "rpm": args.rpm,
        "tpm": args.tpm,
        "concurrent": args.concurrent,
        "budget": args.budget,
        "budget_period": args.period,
        "trusted": args.trusted,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _budget(store: KeyStore, args: argparse.Namespace) -> int:
    if args.remove:
        if store.remove_budget(args.project):
            print(f"removed the budget of {args.project}")
            return 0
        print(f"error: project {args.project!r} has no budget", file=sys.stderr)
        return 1
    fields = {"budget": args.budget, "budget_period": args.period}
    budget = store.set_budget(args.project, {k: v for k, v in fields.items() if v is not None})
    if args.json:
        print(json.dumps(budget))
    else:
        print(f"project {budget['project']}: {_money(budget)}")
    return 0


def _key_table(keys: list[dict[str, Any]]) -> str:
    lines = [
        f"{'id':<12} {'name':<20} {'agent':<16} {'models':<20} {'rpm':>6} {'tpm':>8} "
        f"{'conc':>5} {'spent / budget':>24} state"
    ]
    for k in keys:
        models = ",".join(k["allowed_models"])[:20] or "*"
        state = "revoked" if k["revoked"] else "active"
        lines.append(
            f"{k['id']:<12} {k['name'][:20]:<20} {k['agent_id'][:16]:<16} {models:<20} "
            f"{k['rpm'] or '-':>6} {k['tpm'] or '-':>8} {k['concurrent'] or '-':>5} "
            f"{_money(k):>24} {state}"
        )
    return "\n".join(lines)


def _budget_table(budgets: list[dict[str, Any]]) -> str:
    lines = [f"{'project':<32} {'spent / budget':>24}"]
    lines += [f"{b['project'][:32]:<32} {_money(b):>24}" for b in budgets]
    return "\n".join(lines)


def _money(row: dict[str, Any]) -> str:
    """``1.23 / 5.00 daily``; only the spend without a budget."""
    spent = f"{row['spent_usd']:.2f}"
    if row["budget_usd"] is None:
        return spent
    period = f" {row['budget_period']}" if row["budget_period"] else ""
    return f"{spent} / {row['budget_usd']:.2f}{period}"
