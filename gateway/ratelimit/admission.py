"""One request's answer from the rate limiter, and the protocol of the stores behind it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from gateway.ratelimit.policy import LimitName, Scope, seconds_to_full

# ------------------------------------------------------------------------ admission result


class Backend(Protocol):
    """Where bucket state lives: this process, or a store shared by every replica."""

    async def admit(self, scopes: Sequence[Scope], est_tokens: int) -> Admission: ...

    async def release(self, admission: Admission, actual_tokens: int | None) -> None: ...

    def release_nowait(self, admission: Admission, actual_tokens: int | None) -> bool:
        """``release`` done without awaiting; False if this store needs ``release`` awaited."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class Admission:
    """The answer to one request: allowed or not, why, and what to tell the client.

    Hold on to it until the request ends and call ``release`` exactly once (again is harmless).
    """

    __slots__ = (
        "_backend",
        "_released",
        "allowed",
        "denied_at",
        "denied_limit",
        "est_tokens",
        "lease",
        "levels",
        "retry_after",
        "scopes",
    )

    def __init__(
        self,
        scopes: Sequence[Scope],
        est_tokens: int,
        levels: Sequence[tuple[float, ...]],
        retry_after: float = 0.0,
        denied_at: int = -1,
        denied_limit: LimitName | None = None,
        backend: Backend | None = None,
        lease: str = "",
    ) -> None:
        self.scopes = scopes
        self.est_tokens = est_tokens
        # Per scope, (requests left, tokens left, ...) after this request; before it if denied.
        self.levels = levels
        self.allowed = denied_at < 0
        self.retry_after = retry_after
        self.denied_at = denied_at
        self.denied_limit = denied_limit
        self.lease = lease
        self._backend = backend
        self._released = False

    @property
    def denied_by(self) -> Scope | None:
        """The most constraining scope: the one that asks for the longest wait."""
        return self.scopes[self.denied_at] if self.denied_at >= 0 else None

    async def release(self, actual_tokens: int | None = None) -> None:
        """Return the concurrency slot and settle tokens; None keeps the estimate as charged."""
        if self.release_nowait(actual_tokens):
            return
        assert self._backend is not None
        self._released = True
        await self._backend.release(self, actual_tokens)

    def release_nowait(self, actual_tokens: int | None = None) -> bool:
        """``release`` where it needs no await; False: nothing done, await ``release`` instead.

        The request path tries this first: with the in-memory backend it saves a coroutine.
        """
        backend = self._backend
        if self._released or not self.allowed or backend is None:
            return True
        if not backend.release_nowait(self, actual_tokens):
            return False
        self._released = True
        return True

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-* for the tightest scope of each kind, and Retry-After if denied.

        The tightest scope is the one with the fewest requests (tokens) left: the first to say no.
        """
        rpm = tpm = 0
        requests_left = tokens_left = 0.0
        for scope, level in zip(self.scopes, self.levels, strict=True):
            limits = scope.limits
            if limits.rpm > 0 and (not rpm or level[0] < requests_left):
                rpm, requests_left = limits.rpm, level[0]
            if limits.tpm > 0 and (not tpm or level[1] < tokens_left):
                tpm, tokens_left = limits.tpm, level[1]
        out: list[tuple[bytes, bytes]] = []
        if rpm:
            _quota_headers(out, _REQUEST_HEADERS, rpm, requests_left)
        if tpm:
            _quota_headers(out, _TOKEN_HEADERS, tpm, tokens_left)
        if not self.allowed:
            # The OpenAI SDKs read retry-after-ms first; HTTP's Retry-After is whole seconds.
            out.append((b"retry-after", str(max(_ceil(self.retry_after), 1)).encode()))
            out.append((b"retry-after-ms", str(_ceil(self.retry_after * 1000)).encode()))
        return out

    def message(self) -> str:
        """An error message in the spirit of OpenAI's 429 text."""
        scope = self.denied_by
        if scope is None:
            return "request admitted"
        limits = scope.limits
        what = {
            "requests": f"{limits.rpm} requests per minute",
            "tokens": f"{limits.tpm} tokens per minute (this request: ~{self.est_tokens})",
            "concurrent": f"{limits.concurrent} requests at once",
        }[self.denied_limit or "requests"]
        return (
            f"Rate limit reached for {scope.kind} {scope.name!r}: {what}. "
            f"Please try again in {format_duration(self.retry_after)}."
        )


_REQUEST_HEADERS = (
    b"x-ratelimit-limit-requests",
    b"x-ratelimit-remaining-requests",
    b"x-ratelimit-reset-requests",
)
_TOKEN_HEADERS = (
    b"x-ratelimit-limit-tokens",
    b"x-ratelimit-remaining-tokens",
    b"x-ratelimit-reset-tokens",
)


def _quota_headers(
    out: list[tuple[bytes, bytes]], names: tuple[bytes, bytes, bytes], capacity: int, left: float
) -> None:
    out.append((names[0], b"%d" % capacity))
    out.append((names[1], b"%d" % (left if left > 0 else 0)))
    out.append((names[2], format_duration(seconds_to_full(left, capacity)).encode()))


def format_duration(seconds: float) -> str:
    """Go's duration style, as OpenAI's reset headers use it: "20ms", "1s", "1m26.4s", "6m0s".

    Rounded up to the millisecond so that a client waiting exactly this long is never early.
    """
    ms = _ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, frac = divmod(ms, 1000)
    text = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    return f"{minutes}m{text}s" if minutes else f"{text}s"


def _ceil(value: float) -> int:
    """Round up, but not for float noise: a 20 s wait computed as 20.000000000000004 is 20."""
    return max(math.ceil(value - 1e-6), 0)
