"""The wire contract the gateway and its adapters share: a leaf that imports nothing of turnout.

``gateway/wire.py`` (what clients send), ``gateway/translate`` and ``adapters/`` all name these
types; keeping them here, below both, is what lets ``adapters/`` be a layer without a cycle
(tests/test_layers.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum

import msgspec

Fields = dict[str, msgspec.Raw]

# A JSON object decoded one level deep: what ``fields`` are everywhere in the gateway.
_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])


class Operation(StrEnum):
    """The OpenAI endpoints a request can be for; the value is the path under ``/v1``."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


class WireProtocol(StrEnum):
    """The protocol a body or an event stream is written in.

    Adapters answer in OpenAI's shape, except with a request's ``native`` body, which they
    answer in its protocol: every reply and open stream says which, so nobody sniffs bytes.
    """

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    # OpenAI's Responses API (``/v1/responses``), spoken by OpenAI itself (adapters/openai_responses.py).
    RESPONSES = "responses"


class Native:
    """A client's request in its own protocol, for an upstream that speaks that protocol.

    ``fields`` (the body one level deep, as the upstream should get it) is decoded on first
    use: most requests go to an OpenAI upstream and never need it.
    """

    __slots__ = ("_body", "_fields", "_rewrite", "headers", "only", "protocol", "taker")

    def __init__(
        self,
        protocol: WireProtocol,
        body: bytes,
        headers: Mapping[str, str],
        rewrite: Callable[[Fields], Fields] | None = None,
        only: str | None = None,
    ) -> None:
        self.protocol = protocol
        # Protocol headers worth forwarding (``anthropic-beta``, ``anthropic-version``).
        self.headers = headers
        self._body = body
        self._rewrite = rewrite
        self._fields: Fields | None = None
        # The one provider that may take the body (None: any that speaks its protocol): a
        # Responses continuation whose id only that provider knows (gateway/api/responses.py).
        self.only = only
        # The provider the last attempt gave the body to, None when it got ``fields``:
        # attempts are sequential, so once answered it names the provider that answered.
        self.taker: str | None = None

    @property
    def fields(self) -> Fields:
        if self._fields is None:
            fields = _FIELDS.decode(self._body)
            self._fields = self._rewrite(fields) if self._rewrite else fields
        return self._fields
