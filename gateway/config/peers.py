"""Other turnouts this one sends requests to: the ``peers:`` section (issue 17).

A peer is another turnout (another GPU box) named by URL and key. Its roles become extra
targets of the models of the same name; which peer goes first is decided per request from
what each peer's engines are doing (``gateway/peers/policy.py``).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.config.upstreams import Timeouts

# What to do when a peer fails in one way: try the next target, or answer the client with
# this failure at once (a body timeout after a long prompt: sending the prompt to another
# box would prefill it all again).
Action = Literal["next", "fail"]

# Carried by every request turnout sends to a peer: a request that arrives with it is served
# by the local engines only, never sent to a peer again, so requests cannot loop between peers.
HOP_HEADER = "x-turnout-hop"
PEER_PREFIX = "peer:"


class Failures(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One action per failure class (llama-swap #945's classes). A 4xx is never one of them:
    the client's own mistake is its answer, from any peer."""

    # Connection refused, not made within timeouts.connect, or closed before any answer (the
    # box or its turnout is down, or went down while the request waited).
    connect: Action = "next"
    # Connected, but no response head within timeouts.first_byte.
    headers_timeout: Action = "next"
    # The head came, the content did not (timeouts.first_byte / idle): the peer has the prompt.
    body_timeout: Action = "fail"
    status_5xx: Action = "next"
    status_429: Action = "next"


class Peer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Another turnout: its URL (no /v1), a key it accepts on /v1 and /engine/*, its roles."""

    url: str
    # Its admin key (its /engine/status and /engine/events need one), or empty for a peer
    # that lets this machine in without a key.
    key: str = ""
    # The roles (model names) it serves: each becomes a target of the local model of the same
    # name, or a model of its own.
    roles: tuple[str, ...] = ()
    failures: Failures = Failures()
    timeouts: Timeouts = Timeouts()
    # Whether ``local_only`` models may use it; None: inferred from the URL's host.
    local: bool | None = None
    # How often its /engine/status is read (queue depths, and its states while its event
    # stream is down); state changes arrive at once through /engine/events.
    poll_seconds: float = 2.0
