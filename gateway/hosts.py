"""Which ``Host`` names a keyless gateway answers: the guard against DNS rebinding.

Without keys, turnout trusts "the caller is on this machine". A web page in a local browser can
pass for that: its site's DNS name first resolves to the attacker's server, then (rebound) to
127.0.0.1, and the page's now same-origin requests reach turnout with the attacker's name in both
``Host`` and ``Origin``, so comparing the two proves nothing. What rebinding cannot change is the
name itself: the browser sends the page's own name in ``Host``. So a keyless gateway answers only
names no outside attacker can make resolve to it:

- loopback names: ``localhost``, ``*.localhost``, 127.x.x.x, ``[::1]`` (any port: the name
  is what matters), and this machine's own host name;
- on an open network (``auth.allow_open_network``) also IP addresses (a page reached by address
  has that address as its origin, so it is no rebinding) and local-network names: single-label
  names (``turnout``, a compose service) and names under ``.local``, ``.internal``, ``.lan``
  and ``.home.arpa``, which public DNS cannot answer;
- whatever ``auth.allowed_hosts`` adds (``"*"`` turns the guard off).

A request without ``Host`` (HTTP/1.0) is answered: browsers always send one, and rebinding needs
a browser. Gateways with keys never consult this: a key is not something a web page has.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from fnmatch import fnmatchcase

NETWORK_SUFFIXES = (".local", ".internal", ".lan", ".home.arpa")


def split_host(value: str) -> tuple[str, str]:
    """``Host`` header → (lower-case name without brackets or final dot, port or "")."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, ""
        name, rest = value[1:end], value[end + 1 :]
        return name, rest[1:] if rest.startswith(":") else ""
    if value.count(":") == 1:
        name, port = value.split(":")
    else:
        # No port, or an unbracketed IPv6 address (not valid in Host, but unambiguous).
        name, port = value, ""
    return name.rstrip("."), port


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    return address is not None and address.is_loopback


def is_network_name(name: str) -> bool:
    """A name only this machine's network can resolve, or an address (which is no name at all)."""
    if _address(name) is not None:
        return True
    return bool(name) and ("." not in name or name.endswith(NETWORK_SUFFIXES))


class HostPolicy:
    """A pure policy: may a keyless gateway answer a request addressed to this ``Host``?"""

    def __init__(
        self, allowed: Iterable[str] = (), *, open_network: bool = False, machine: str = ""
    ) -> None:
        self.open_network = open_network
        names: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        patterns: list[str] = []
        for entry in allowed:
            name, port = split_host(entry)
            if any(c in name for c in "*?["):
                patterns.append(name)
            elif port:
                pairs.add((name, port))
            else:
                names.add(name)
        machine_name = split_host(machine)[0]
        if machine_name:
            names.add(machine_name)
        self._names = frozenset(names)
        self._pairs = frozenset(pairs)
        self._patterns = tuple(patterns)
        self.everything = "*" in self._patterns

    def permits(self, host: str) -> bool:
        name, port = split_host(host)
        if self.everything or is_loopback_name(name) or name in self._names:
            return True
        if (name, port) in self._pairs or any(fnmatchcase(name, p) for p in self._patterns):
            return True
        return self.open_network and is_network_name(name)

    def refusal(self, host: str) -> str:
        """What the client is told: the name refused, why, and how to allow it."""
        accepted = "localhost, 127.0.0.1 and [::1]"
        if self.open_network:
            accepted += ", IP addresses and local-network names"
        return (
            f"Host {host!r} is not a name of this machine: turnout without API keys answers only "
            f"{accepted}, so that a web page cannot reach it through DNS rebinding. To serve this "
            f"name, add it to auth.allowed_hosts in routing.yaml (or configure keys)"
        )
