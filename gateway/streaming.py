"""What turns upstream chat events into the client protocol's events, and the keep-alive comment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.contract import WireProtocol
    from gateway.errors import GatewayError
    from gateway.wire import Usage

KEEPALIVE = b": keepalive\n\n"


class StreamTranslator(Protocol):
    """Upstream chat events in, the client protocol's events out (see gateway/translate)."""

    usage: Usage | None

    def begin(self, protocol: WireProtocol) -> None:
        """Called once, before the first event: the protocol the upstream answers in."""
        ...

    def feed(self, event: bytes) -> bytes: ...

    def finish(self) -> list[bytes]:
        """The closing events once the upstream ended, as pieces written in order.

        A list rather than one ``bytes``: Responses repeats a reply's whole text in four final
        events, and keeping that text one shared piece means it is never copied four times
        (a 200 MB reply once cost 1.3-2.0 GB of RSS this way).
        """
        ...

    def fail(self, error: GatewayError) -> bytes: ...
