"""The shipped routing.yaml as a newcomer runs it: memory and tools answer at once (issue 16).

A real `turnout serve` on the shipped file (its database moved into a temporary folder, no
provider keys): /v1/memory/* and /v1/tools are there without installing or enabling anything,
and the embedding model (numpy, onnxruntime) is not in the process until memory is first used,
so idle RSS and time to ready stay as without the plugins (bench/startup.py measures both).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.gateway_server import free_port

ROOT = Path(__file__).resolve().parent.parent
# Shared objects of numpy and onnxruntime, as /proc/PID/maps names them.
NUMPY, ONNXRUNTIME = "_multiarray_umath", "onnxruntime_pybind11_state"


def call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as failed:
        return failed.code, json.loads(failed.read() or b"null")


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`turnout serve` on the shipped routing.yaml: its URL and process id."""
    raw = yaml.safe_load((ROOT / "routing.yaml").read_text())
    assert raw["plugins"]["enabled"] == ["memory", "tools"]
    raw["server"]["database"] = str(tmp_path / "turnout.db")
    config = tmp_path / "routing.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("TURNOUT_")
    }
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while call_status(url + "/health") != 200:
            assert process.poll() is None, "turnout serve exited"
            assert time.monotonic() < deadline, "not ready after 60 s"
            time.sleep(0.05)
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def call_status(url: str) -> int:
    try:
        return call(url)[0]
    except OSError:
        return 0


def test_memory_and_tools_answer_on_the_shipped_config_and_the_model_loads_on_first_use(
    shipped: tuple[str, int],
) -> None:
    url, pid = shipped
    status, tools = call(url + "/v1/tools")
    assert status == 200 and tools["object"] == "list"
    time.sleep(0.5)  # a background load at start, were there one, would be under way
    idle = mapped(pid)
    assert NUMPY not in idle and ONNXRUNTIME not in idle, "loaded before memory was used"

    status, stored = call(url + "/v1/memory/store", {"content": "We deploy on Fridays."})
    assert status == 200 and stored["id"].startswith("mem-")
    status, found = call(url + "/v1/memory/query", {"query": "when do we ship?", "limit": 1})
    assert status == 200 and found["data"][0]["content"] == "We deploy on Fridays."
    used = mapped(pid)
    assert NUMPY in used and ONNXRUNTIME in used
