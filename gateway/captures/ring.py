"""The last ``max_entries`` captured exchanges, newest last, each body cut at ``max_bytes``.

An entry joins the ring when its request is admitted to the pipeline and fills in as the answer
is sent, so a stream still running (or one whose caller left) shows what went out so far.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.captures.entry import Entry
from gateway.captures.recording import RecordingClient
from gateway.captures.redact import Redactor

if TYPE_CHECKING:
    from gateway.config.observability import Capture
    from gateway.config.schema import Config
    from gateway.pipeline.call import Call
    from gateway.pipeline.client import Client


class Captures:
    """The ring, and which requests go in it (routing.yaml ``capture``)."""

    def __init__(self, settings: Capture, secrets: Iterable[str] = ()) -> None:
        self._models = frozenset(settings.models)
        self._keys = frozenset(settings.keys)
        self._cap = settings.max_bytes
        self._entries: deque[Entry] = deque(maxlen=settings.max_entries)
        self._numbers = itertools.count(1)
        self.redactor = Redactor(secrets)

    @classmethod
    def of(cls, config: Config) -> Captures:
        """The ring routing.yaml asks for, masking the configured secrets by value too."""
        secrets = [config.auth.admin_key]
        for provider in config.providers.values():
            secrets.append(provider.api_key)
            secrets.extend(provider.headers.values())
        return cls(config.capture, secrets)

    def wants(self, call: Call) -> bool:
        """Captured: a listed model or key's requests; every request when neither is listed."""
        if not self._models and not self._keys:
            return True
        return call.model in self._models or call.identity.key_id in self._keys

    def watch(self, call: Call, body: bytes, client: Client) -> Client:
        """``client``, recording into a new entry when this request is captured."""
        if not self.wants(call):
            return client
        entry = Entry(next(self._numbers), call, client.scope, self._cap)
        entry.request.add(body)
        self._entries.append(entry)
        return RecordingClient(client, entry)

    def refused(self, call: Call, body: bytes, client: Client) -> Client:
        """``client`` of a request that failed: recording already, or now if it is wanted
        (one refused before admission has no entry yet)."""
        if isinstance(client, RecordingClient):
            return client
        return self.watch(call, body, client)

    def entries(self) -> list[Entry]:
        """Newest first."""
        return list(reversed(self._entries))

    def get(self, number: int) -> Entry | None:
        return next((e for e in self._entries if e.id == number), None)
