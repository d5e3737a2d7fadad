"""A fake ``nvidia-smi`` for machines without a GPU: put first on ``PATH``, it answers the
queries turnout makes exactly as the real one does, and refuses any other.

The real tool's output for those queries (``--format=csv,noheader,nounits``): one row per GPU
or per process, fields separated by ", ", memory in MiB without the unit::

    $ nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits
    0, NVIDIA H100 80GB HBM3, 81559, 81004
    1, NVIDIA H100 80GB HBM3, 81559, 40120
    $ nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits
    4242, 40960

Every call is appended to ``calls.log`` beside the script, so a test can count them.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

H100 = "NVIDIA H100 80GB HBM3"


@dataclass(frozen=True)
class FakeGpu:
    index: int
    free_mb: int
    total_mb: int = 81559
    name: str = H100


def install(directory: Path, gpus: Sequence[FakeGpu], apps: str = "") -> Path:
    """Write ``directory/nvidia-smi``; ``apps`` is the compute-apps answer (``pid, MiB`` rows)."""
    rows = "".join(f"{g.index}, {g.name}, {g.total_mb}, {g.free_mb}\n" for g in gpus)
    script = directory / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {shlex.quote(str(directory / "calls.log"))}\n'
        'case "$*" in\n'
        '  "--query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits")\n'
        f"    printf '%s' {shlex.quote(rows)} ;;\n"
        '  "--query-compute-apps=pid,used_memory --format=csv,noheader,nounits")\n'
        f"    printf '%s' {shlex.quote(apps)} ;;\n"
        "  *)\n"
        # What the real tool says for a field it does not know, and its exit status.
        '    echo "Field \\"$1\\" is not a valid field to query." ; exit 2 ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return script


def calls(directory: Path) -> list[str]:
    try:
        return (directory / "calls.log").read_text().splitlines()
    except FileNotFoundError:
        return []
