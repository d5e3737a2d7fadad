"""Plain-text tables, target checks and result files shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass(frozen=True, slots=True)
class Target:
    """One number from the issue's targets, with the measured value next to it."""

    what: str
    measured: float | None
    limit: float
    unit: str
    at_least: bool = False  # True: measured must be >= limit; False: <= limit

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "n/a"
        ok = self.measured >= self.limit if self.at_least else self.measured <= self.limit
        return "PASS" if ok else "MISS"

    def row(self) -> list[object]:
        sign = "≥" if self.at_least else "≤"
        return [self.what, self.measured, f"{sign} {_fmt(self.limit)} {self.unit}", self.verdict]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def targets_table(targets: Sequence[Target]) -> str:
    return table(["target", "measured", "goal", ""], [t.row() for t in targets])


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was at the start."""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": _output(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else None,
        "turnout_commit": _output(
            ["git", "-C", str(RESULTS.parent.parent), "rev-parse", "--short", "HEAD"]
        ).strip(),
        "turnout_dirty": bool(
            _output(
                [
                    "git",
                    "-C",
                    str(RESULTS.parent.parent),
                    "status",
                    "--porcelain",
                    "gateway",
                    "adapters",
                ]
            ).strip()
        ),
    }


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout or done.stderr


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / f"{name}-latest.json").write_text(path.read_text())
    return path
