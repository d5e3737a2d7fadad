"""How client commands print: one-line errors, JSON for scripts, aligned tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def fail(message: str, code: int = 1) -> int:
    """Print ``error: message`` on stderr and hand back the exit code to return."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def emit_json(value: Any, out: TextIO | None = None) -> None:
    """One JSON document on one line: what ``--json`` prints."""
    print(json.dumps(value, ensure_ascii=False), file=out or sys.stdout, flush=True)


def duration(seconds: float | None) -> str:
    """3.2s, 4m05s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Left-aligned columns; the last column runs free (long details do not widen the rest)."""
    cells = [list(headers), *[[text(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    lines = []
    for row in cells:
        parts = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append((indent + "  ".join([*parts, row[-1]])).rstrip())
    return "\n".join(lines)


def one_line(value: str, limit: int = 160) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
