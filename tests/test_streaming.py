"""gateway/pipeline/endpoint.py: the HTTP client side of a streamed answer."""

from __future__ import annotations

from typing import Any

from gateway.pipeline.endpoint import SLICE, HttpClient


async def test_a_write_larger_than_a_slice_goes_out_in_slices_that_add_up() -> None:
    """Each slice waits for the socket (the server's send) before the next is made."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        raise AssertionError("a stream's writes never read the request")

    response = HttpClient({"headers": []}, receive, send, limit=1 << 20)
    data = bytes(range(256)) * (SLICE // 256) * 3 + b"tail"
    await response.write(data)
    await response.write(b"small")
    bodies = [m["body"] for m in sent]
    assert [len(b) for b in bodies] == [SLICE, SLICE, SLICE, 4, 5]
    assert b"".join(bodies) == data + b"small"
    assert all(m["more_body"] for m in sent)
