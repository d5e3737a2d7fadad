"""What `turnout serve` imports before it answers /health (issue 13: ready in <= 1 s).

Each heavy package below once sat on the start-up path with the memory and tools plugins on,
costing 0.05-0.6 s of the 2-core bench machine's readiness; none is needed to answer the first
request. The check runs in a fresh interpreter: this one has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Imported where first used: the mcp SDK (with pydantic) when an MCP server connects,
# jsonschema with the first tool schema, numpy/onnxruntime/tokenizers when memory is first used
# (issue 16: not even in the background at start, so idle RSS stays low). pydantic also stays
# out of Litestar (gateway/framework.py).
NOT_WHILE_BUILDING = (
    "mcp",
    "mcp_types",
    "pydantic",
    "jsonschema",
    "numpy",
    "onnxruntime",
    "tokenizers",
)
# A while after start-up too: nothing loads until a request needs it.
NOT_WHILE_STARTING = NOT_WHILE_BUILDING

SCRIPT = """
import asyncio, json, sys
from gateway.app import create_app
from gateway.config import from_mapping

raw = {
    "server": {"database": sys.argv[1]},
    "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "local": True}},
    "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
    "plugins": {"enabled": ["memory", "tools"]},
}
app = create_app(from_mapping(raw, "test", {}))
built = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2:])

async def start():
    async with app.lifespan():
        await asyncio.sleep(0.5)  # a background load, were there one, would be under way
        return sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in sys.argv[2:])

print(json.dumps({"built": built, "started": sorted(set(asyncio.run(start())))}))
"""


def test_serve_with_memory_and_tools_imports_no_heavy_package_before_it_answers(
    tmp_path: Path,
) -> None:
    heavy = sorted(set(NOT_WHILE_BUILDING))
    ran = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "turnout.db"), *heavy],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    found = json.loads(ran.stdout.splitlines()[-1])
    assert found["built"] == [], "imported by create_app"
    assert [m for m in found["started"] if m in NOT_WHILE_STARTING] == [], "imported at start"
