"""gateway/pipeline/relay.py: events that arrive together leave together, in order, once."""

from __future__ import annotations

from typing import Any

from gateway.api.proxy import CHAT, PassthroughStream
from gateway.config import Model, Target
from gateway.contract import Operation, WireProtocol
from gateway.errors import UpstreamProtocolError
from gateway.forwarder import OpenStream, Trace
from gateway.pipeline.call import Call
from gateway.pipeline.relay import Relay
from gateway.wire import ClientRequest, decode_request

MODEL = Model(name="m", targets=(Target(provider="p", model="x"),))


def chunk(text: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % text.encode()


class ReadInBatches:
    """An upstream stream whose reads bring several events, as SSEStream's do."""

    def __init__(self, reads: list[list[bytes]]) -> None:
        self._reads = reads
        self._pending: list[bytes] = []
        self.closed = False

    def __aiter__(self) -> ReadInBatches:
        return self

    async def __anext__(self) -> bytes:
        if not self._pending:
            if not self._reads:
                raise StopAsyncIteration
            self._pending = list(self._reads.pop(0))
        return self._pending.pop(0)

    def drain(self) -> list[bytes]:
        rest, self._pending = self._pending, []
        return rest

    async def aclose(self) -> None:
        self.closed = True


class Forwarding:
    def __init__(self, stream: ReadInBatches) -> None:
        self._stream = stream
        self.released = 0

    async def open_stream(
        self, model: Model, request: ClientRequest, request_id: str, trace: Trace
    ) -> OpenStream:
        first = await anext(self._stream)

        def release() -> None:
            self.released += 1

        return OpenStream(self._stream, self._stream, first, WireProtocol.OPENAI, release)


class Recorder:
    """The pipeline's Client, writing down what the relay sends."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {"headers": []}
        self.started = False
        self.writes: list[bytes] = []
        self.ended = False

    async def start(self, headers: Any) -> None:
        self.started = True

    async def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def end(self) -> None:
        self.ended = True

    def settle(self) -> None:
        pass


class FailsOn(PassthroughStream):
    """The passthrough translator, failing on one event as an invalid upstream event would."""

    def __init__(self, bad: bytes) -> None:
        super().__init__(include_usage=True)
        self._bad = bad

    def feed(self, event: bytes) -> bytes:
        if event == self._bad:
            raise UpstreamProtocolError("upstream sent an invalid event")
        return super().feed(event)


async def relay(reads: list[list[bytes]], translator: PassthroughStream) -> tuple[Recorder, int]:
    stream = ReadInBatches(reads)
    forwarding = Forwarding(stream)
    call = Call("r1")
    call.forwarder = forwarding  # type: ignore[assignment]
    request = decode_request(Operation.CHAT, b'{"model":"m","messages":[],"stream":true}')
    client = Recorder()
    status = await Relay(CHAT, keepalive_seconds=30, limit_headers=False).stream(
        call,
        MODEL,
        request,
        translator,
        client,  # type: ignore[arg-type]
    )
    assert stream.closed and forwarding.released == 1, "closing the stream releases it once"
    return client, status


async def test_events_read_together_are_written_together_in_order() -> None:
    events = [chunk(str(i)) for i in range(6)]
    done = b"data: [DONE]\n\n"
    client, status = await relay(
        [events[:1], events[1:4], [*events[4:], done]], PassthroughStream(True)
    )
    assert status == 200 and client.ended
    # The first event alone (time to first token), then one write per upstream read.
    assert client.writes == [events[0], b"".join(events[1:4]), b"".join([*events[4:], done])]


async def test_what_came_before_a_bad_event_in_the_same_read_still_reaches_the_client() -> None:
    good, bad = chunk("fine"), b"data: {broken\n\n"
    client, status = await relay([[chunk("first")], [good, bad, chunk("never")]], FailsOn(bad))
    assert status == 502
    assert client.writes[0] == chunk("first")
    assert client.writes[1] == good
    assert client.writes[2].startswith(b'data: {"error"')
    assert all(b"never" not in w for w in client.writes)
