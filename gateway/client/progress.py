"""A plain-text progress bar on stderr: ``[=====>    ] 42/100 3 failed 12s``.

On a terminal it redraws one line; into a file or pipe it writes a line now and then (every
``every`` seconds) and at the end, so logs stay short and still show that work moves.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        total: int,
        done: int = 0,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        width: int = 30,
        every: float = 2.0,
    ) -> None:
        self.total = total
        self.done = done
        self.failed = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.width = width
        self.every = every
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._last_drawn = 0.0
        self._drawn_width = 0

    def advance(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        self.draw()

    def line(self) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = min(self.width, int(self.width * share))
        bar = "=" * filled + (">" if filled < self.width else "")
        text = f"[{bar.ljust(self.width)}] {self.done}/{self.total}"
        if self.failed:
            text += f" {self.failed} failed"
        return text + f" {time.monotonic() - self.started:.0f}s"

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (
            not force and not self.live and now - self._last_drawn < self.every
        ):
            return
        self._last_drawn = now
        text = self.line()
        if self.live:
            self.stream.write("\r" + text.ljust(self._drawn_width))
            self._drawn_width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """The final state, and the cursor on a fresh line."""
        self.draw(force=True)
        if self.enabled and self.live:
            self.stream.write("\n")
            self.stream.flush()
