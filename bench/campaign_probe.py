"""Checks that run inside the build under test, in their own process.

``python -m bench.campaign_probe prune`` reads a routing document (JSON) on stdin and writes it
back without the keys that build's ``gateway.config`` does not know, plus the key paths it
dropped: the campaign writes one config with every hardening key, and an older build (where an
unknown key stops ``turnout serve``) gets only what it understands.

``python -m bench.campaign_probe ssrf`` asks the build's http tool executor whether it would
connect to each of the URLs on stdin (one a line): its URL check for literal addresses, then its
guarded resolver for names. It prints one JSON line per URL: ``{"url", "refused", "why"}``.

Run with the build's code first on ``sys.path`` (the campaign sets the working directory and
PYTHONPATH), so ``import gateway`` is the build's, not the working tree's.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import json
import socket
import sys
from typing import Any
from urllib.parse import urlsplit

import msgspec


def prune(raw: Any, kind: msgspec.inspect.Type, path: str, dropped: list[str]) -> Any:
    """``raw`` with every key unknown to the msgspec type ``kind`` removed, recursively."""
    if isinstance(kind, msgspec.inspect.StructType) and isinstance(raw, dict):
        fields = {f.encode_name: f.type for f in kind.fields}
        kept = {}
        for key, value in raw.items():
            where = f"{path}.{key}" if path else key
            if key in fields:
                kept[key] = prune(value, fields[key], where, dropped)
            else:
                dropped.append(where)
        return kept
    if isinstance(kind, msgspec.inspect.DictType) and isinstance(raw, dict):
        return {k: prune(v, kind.value_type, f"{path}.{k}", dropped) for k, v in raw.items()}
    if isinstance(kind, msgspec.inspect.VarTupleType | msgspec.inspect.ListType) and isinstance(
        raw, list
    ):
        return [prune(v, kind.item_type, f"{path}[{i}]", dropped) for i, v in enumerate(raw)]
    if isinstance(kind, msgspec.inspect.UnionType):
        for member in kind.types:
            if isinstance(member, msgspec.inspect.StructType) and isinstance(raw, dict):
                return prune(raw, member, path, dropped)
    return raw


def plugin_sections(raw: dict[str, Any], config_type: type) -> dict[str, Any]:
    """Top-level sections a build hands to its plugins (``tools:``, ``memory:``) unchecked by
    ``Config``: builds whose Config has ``sections`` take any installed plugin's name."""
    fields = getattr(config_type, "__struct_fields__", ())
    if "sections" not in fields:
        return {}
    from importlib.metadata import entry_points

    plugins = {entry.name for entry in entry_points(group="turnout")}
    return {k: v for k, v in raw.items() if k not in fields and k in plugins}


def prune_main() -> None:
    from gateway.config import Config

    raw = json.load(sys.stdin)
    dropped: list[str] = []
    sections = plugin_sections(raw, Config)
    rest = {k: v for k, v in raw.items() if k not in sections}
    kept = prune(rest, msgspec.inspect.type_info(Config), "", dropped)
    # A plugin section is checked by its plugin, whose settings type this probe cannot see:
    # it goes through whole.
    json.dump({"config": {**kept, **sections}, "dropped": dropped}, sys.stdout)


def first_found(*places: tuple[str, str]) -> Any:
    """The first ``(module, name)`` that imports: names move between builds."""
    for module, name in places:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {places} in this build")


async def refused(url: str) -> tuple[bool, str]:
    from gateway.plugins.tools.http import Destinations, GuardedResolver, HttpClient

    ToolFailed = first_found(
        ("gateway.errors", "ToolFailed"), ("gateway.plugins.tools.registry", "ToolFailed")
    )
    HttpTools = first_found(
        ("gateway.plugins.tools.settings", "HttpTools"), ("gateway.config", "HttpTools")
    )
    try:
        HttpClient(HttpTools()).check_url(url)
    except ToolFailed as exc:
        return True, f"check_url: {exc}"
    host = urlsplit(url).hostname or ""
    if _is_ip(host):
        return False, "allowed: check_url passed an IP literal (aiohttp connects to it directly)"
    resolver = GuardedResolver(Destinations(()))
    try:
        # Family 0 (any), as aiohttp's TCPConnector asks.
        found = await resolver.resolve(host, 80, socket.AF_UNSPEC)
    except OSError as exc:
        # DestinationRefused is an OSError too; a name nothing resolves cannot be reached either.
        return True, f"resolver: {type(exc).__name__}: {exc}"
    finally:
        await resolver.close()
    return False, "allowed: " + ", ".join(sorted({r["host"] for r in found}))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def ssrf_main() -> None:
    for url in (line.strip() for line in sys.stdin):
        if url:
            refused_, why = await refused(url)
            print(json.dumps({"url": url, "refused": refused_, "why": why[:200]}), flush=True)


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "prune":
        prune_main()
    elif command == "ssrf":
        asyncio.run(ssrf_main())
    else:
        sys.exit("usage: python -m bench.campaign_probe prune|ssrf")


if __name__ == "__main__":
    main()
