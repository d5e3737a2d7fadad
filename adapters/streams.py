"""What every upstream stream shares: deadlines no byte can bend, and bounded linear framing.

Both are per stream, used by ``SSEStream`` (OpenAI and Anthropic SSE) and Ollama's NDJSON
reader; neither awaits anything, so the relay still costs one await per upstream read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import aiohttp

from adapters.h1 import H1Response
from gateway.config.upstreams import Timeouts
from gateway.errors import UpstreamBodyTimeout, UpstreamProtocolError, UpstreamTimeout

# What the upstream session decodes itself (aiohttp with auto_decompress, gateway/state.py);
# br and zstd only with their optional libraries, and aiohttp refuses them itself without.
_DECODED = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


def refuse_unknown_encoding(response: aiohttp.ClientResponse | H1Response) -> None:
    """Close and raise when the body is in a coding nobody here decodes.

    The session asks for identity and decodes gzip and deflate; aiohttp already refuses br and
    zstd it cannot decode, but passes any other coding through raw, where it would reach the
    client as garbage after a committed 200.
    """
    coding = response.headers.get("Content-Encoding")
    if coding is not None and coding.strip().lower() not in _DECODED:
        response.close()
        raise UpstreamProtocolError(f"upstream answered in Content-Encoding {coding!r}")


class Expiry:
    """Cancels the current task at ``when`` (loop time) unless disarmed first, and tells that
    cancellation apart from any other: ``asyncio.timeout``'s contract, at a fraction of its cost.

    On Python 3.11 ``asyncio.timeout`` checks its state through ``EnumType.__getattr__`` and
    runs two coroutines per use: around each upstream read (three per 20-chunk bench stream)
    it cost, with ``mapped_client_errors()``, 16,000 instructions per read (callgrind); an
    Expiry is one ``call_at`` and one ``cancel``, about 2,800 with its checks.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        task = asyncio.current_task(loop)
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """Whether the ``CancelledError`` being handled is this deadline's (asyncio's test:
        the task was cancelled no more often than when the deadline was set)."""
        return self._fired and self._task.uncancel() <= self._cancelling

    def disarm(self) -> None:
        self._handle.cancel()


class StreamDeadlines:
    """When the current upstream read must have brought content, by three rules.

    - the first content arrives within ``first_byte`` of the request's start;
    - each later content arrives within ``idle`` of the relay asking for it;
    - the whole stream ends within ``max_stream`` of the request's start (0: never).

    Only content moves a deadline: SSE comments and pings do not, so an upstream that sends
    nothing but heartbeats times out (per-read timeouts let a ``: ping`` every few seconds
    hold a request for ever). llama.cpp sends no comments, so it sees no change; mlx_lm's
    keep-alive comments while it reads a prompt no longer stretch ``first_byte``, which is
    therefore the real bound on prompt processing (routing.yaml gives local engines 600 s).
    Mid-stream, a heartbeat cannot hide a wedged generation for longer than ``idle``. The
    keep-alives the gateway sends its client while it waits (gateway/streaming.py) are its
    own and independent of these.
    The idle clock starts when the relay asks for the next event, not when the last one
    arrived: a client slow to take what was sent must not count against the upstream.
    """

    __slots__ = ("_clock", "_end", "_next", "_rearm", "_timeouts", "seen")

    def __init__(self, timeouts: Timeouts, started: float, clock: Callable[[], float]) -> None:
        self._timeouts = timeouts
        self._clock = clock
        self._end = started + timeouts.max_stream if timeouts.max_stream > 0 else math.inf
        self._next = min(started + timeouts.first_byte, self._end)
        self._rearm = False
        self.seen = False  # any content yet

    def next(self) -> float:
        """The loop time by which the read about to start must bring content."""
        if self._rearm:
            self._rearm = False
            self._next = min(self._clock() + self._timeouts.idle, self._end)
        return self._next

    def content(self) -> None:
        """Content arrived: the next read gets a fresh ``idle``."""
        self.seen = True
        self._rearm = True

    def expired(self) -> UpstreamTimeout:
        """The error for the deadline that just passed."""
        t = self._timeouts
        if self._next >= self._end:
            return UpstreamTimeout(
                f"upstream stream exceeded timeouts.max_stream ({t.max_stream:g} s)"
            )
        # The stream's head arrived before any of these deadlines could pass.
        if not self.seen:
            return UpstreamBodyTimeout(
                f"upstream sent no content within timeouts.first_byte ({t.first_byte:g} s)"
            )
        return UpstreamBodyTimeout(f"upstream sent no content for timeouts.idle ({t.idle:g} s)")


class Framer:
    """Cuts a byte stream into frames ending in ``separator`` (one or two bytes), in linear time.

    Joining each new chunk onto the unfinished frame (``pending + chunk``) copies the pending
    bytes once per read: a 64 MB event without its terminator cost 7-9 s of CPU that way and
    stalled every other request. Here the unfinished frame stays a list of chunks, only the new
    chunk is searched (plus the one byte a two-byte separator may straddle), and a frame over
    ``limit`` bytes is refused as soon as it is known to be one.
    """

    __slots__ = ("_held", "_limit", "_sep", "_size", "_what")

    def __init__(self, separator: bytes, limit: int, what: str) -> None:
        if not 1 <= len(separator) <= 2:
            raise ValueError("separator must be one or two bytes")
        self._sep = separator
        self._limit = limit
        self._what = what
        self._held: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The frames ``chunk`` completes, without their separators."""
        if self._held:
            return self._feed_held(chunk)
        *frames, rest = chunk.split(self._sep)
        if len(chunk) > self._limit:
            for frame in frames:
                self._check(len(frame))
        if rest:
            self._hold(rest)
        return frames

    def tail(self) -> bytes:
        """The unfinished frame (what a body ended with, without a separator)."""
        return b"".join(self._held)

    def _feed_held(self, chunk: bytes) -> list[bytes]:
        held, sep = self._held, self._sep
        if not chunk:
            return []
        if len(sep) == 2 and held[-1][-1] == sep[0] and chunk[:1] == sep[1:]:
            # The separator straddles the two reads.
            held[-1] = held[-1][:-1]
            return self._complete(b"", chunk[1:])
        at = chunk.find(sep)
        if at < 0:
            self._hold(chunk)
            return []
        return self._complete(chunk[:at], chunk[at + len(sep) :])

    def _complete(self, last: bytes, rest: bytes) -> list[bytes]:
        self._check(self._size + len(last))
        held = self._held
        held.append(last)
        frame = b"".join(held)
        held.clear()
        self._size = 0
        return [frame, *self.feed(rest)] if rest else [frame]

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._size += len(data)
        self._check(self._size)

    def _check(self, size: int) -> None:
        if size > self._limit:
            self._held.clear()  # the stream is dead; do not keep what may be megabytes
            self._size = 0
            raise UpstreamProtocolError(
                f"upstream {self._what} exceeds {self._limit} bytes (timeouts.max_event_bytes)"
            )
