"""adapters/streams.py: bounded linear framing and content-only stream deadlines (pure, no I/O)."""

from __future__ import annotations

import time

import msgspec
import pytest

from adapters.streams import Framer, StreamDeadlines
from gateway.config import Timeouts
from gateway.errors import UpstreamProtocolError

MiB = 1024 * 1024


def frames_of(framer: Framer, *chunks: bytes) -> list[bytes]:
    return [frame for chunk in chunks for frame in framer.feed(chunk)]


# --- Framer ---------------------------------------------------------------------------------------


def test_frames_split_anywhere_come_out_whole() -> None:
    stream = b"data: one\n\ndata: two\n\n: ping\n\ndata: three\n\n"
    for cut in range(1, len(stream)):
        for second in range(cut, len(stream)):
            framer = Framer(b"\n\n", 1024, "event")
            parts = (stream[:cut], stream[cut:second], stream[second:])
            assert frames_of(framer, *parts) == [
                b"data: one",
                b"data: two",
                b": ping",
                b"data: three",
            ]


def test_a_separator_straddling_two_reads_ends_the_frame() -> None:
    framer = Framer(b"\n\n", 1024, "event")
    assert framer.feed(b"data: a") == []
    assert framer.feed(b"bc\n") == []
    assert framer.feed(b"\ndata: d\n\n") == [b"data: abc", b"data: d"]


def test_ndjson_lines_and_the_last_line_without_its_newline() -> None:
    framer = Framer(b"\n", 1024, "line")
    assert frames_of(framer, b'{"a":1}\n{"b"', b":2}\n{", b'"c":3}') == [b'{"a":1}', b'{"b":2}']
    assert framer.tail() == b'{"c":3}'


def test_an_unterminated_frame_over_the_limit_is_refused_as_soon_as_it_is_one() -> None:
    framer = Framer(b"\n\n", 4096, "event")
    framer.feed(b"data: " + b"x" * 4000)
    with pytest.raises(UpstreamProtocolError, match=r"upstream event exceeds 4096 bytes"):
        framer.feed(b"x" * 100)


def test_a_complete_frame_over_the_limit_in_one_read_is_refused() -> None:
    framer = Framer(b"\n", 1024, "line")
    assert framer.feed(b"x" * 1024 + b"\n") == [b"x" * 1024]  # the limit itself is fine
    with pytest.raises(UpstreamProtocolError, match="upstream line exceeds 1024 bytes"):
        framer.feed(b"y" * 1025 + b"\nz\n")


def test_a_frame_finished_by_a_read_is_checked_whole() -> None:
    framer = Framer(b"\n\n", 1024, "event")
    framer.feed(b"x" * 1000)
    with pytest.raises(UpstreamProtocolError):
        framer.feed(b"y" * 100 + b"\n\n")


def test_buffering_an_unterminated_32_mib_event_is_linear() -> None:
    """Joining each read onto the pending bytes took seconds here (quadratic); now milliseconds."""
    framer = Framer(b"\n\n", 64 * MiB, "event")
    block = b"x" * 65536
    started = time.process_time()
    for _ in range(32 * MiB // len(block)):
        assert framer.feed(block) == []
    (event,) = framer.feed(b"\n\n")
    took = time.process_time() - started
    assert len(event) == 32 * MiB
    assert took < 1.0, f"{took:.2f} s of CPU for 32 MiB"  # linear: about 0.02 s


# --- StreamDeadlines ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def deadlines(clock: Clock, **timeouts: float) -> StreamDeadlines:
    defaults = Timeouts(first_byte=10.0, idle=2.0, max_stream=60.0)
    return StreamDeadlines(msgspec.structs.replace(defaults, **timeouts), clock.now, clock)


def test_the_first_content_is_due_first_byte_after_the_start_whatever_arrives_meanwhile() -> None:
    clock = Clock()
    d = deadlines(clock)
    assert d.next() == 110.0
    clock.now = 109.0  # reads that brought only comments do not call content()
    assert d.next() == 110.0
    assert "timeouts.first_byte (10 s)" in d.expired().message


def test_after_content_the_next_is_due_idle_after_the_relay_asks() -> None:
    clock = Clock()
    d = deadlines(clock)
    clock.now = 103.0
    d.content()
    clock.now = 105.0  # the client took 2 s to take the event: not the upstream's time
    assert d.next() == 107.0
    clock.now = 106.0
    assert d.next() == 107.0  # a comment-only read in between moves nothing
    assert "timeouts.idle (2 s)" in d.expired().message


def test_max_stream_caps_every_deadline_and_zero_means_unlimited() -> None:
    clock = Clock()
    d = deadlines(clock, max_stream=5.0)
    assert d.next() == 105.0
    assert "timeouts.max_stream (5 s)" in d.expired().message
    unlimited = deadlines(clock, max_stream=0.0)
    clock.now = 10_000.0
    unlimited.content()
    assert unlimited.next() == 10_002.0
