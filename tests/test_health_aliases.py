"""Probe paths other gateways' configs use: liveness and readiness aliases (issue 16).

Readiness answers 503 once shutdown begins, to the requests still served while connections
drain (gateway/draining.py), so a load balancer stops sending before the process is gone.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.gateway_server import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    config = {"server": {"database": str(tmp_path / "turnout.db")}}
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        assert process.poll() is None, "turnout exited during start-up"
        try:
            if _get(port, "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("turnout did not start")


def _get(port: int, path: str) -> tuple[int, dict[str, str]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        return _response(sock)


def _response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_liveness_and_readiness_aliases_answer_while_serving(
    gateway: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = gateway
    for path in ("/health", "/health/liveness", "/health/liveliness"):
        assert _get(port, path) == (200, {"status": "ok"}), path
    assert _get(port, "/health/readiness") == (200, {"status": "ready"})


def test_readiness_answers_503_once_shutdown_begins(
    gateway: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = gateway
    # A probe whose head is still arriving when SIGTERM comes is served (draining), after
    # shutdown has begun: it must say "not ready".
    probe = socket.create_connection(("127.0.0.1", port), timeout=10)
    probe.sendall(b"GET /health/readiness HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    time.sleep(0.2)  # the server has read the partial head (not a timing assertion)
    process.send_signal(signal.SIGTERM)
    # The listener closes as shutdown begins, in the same step that marks it: once a new
    # connection is refused, the probe's answer is decided.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the gateway kept accepting connections after SIGTERM")
    probe.sendall(b"Connection: close\r\n\r\n")
    with probe:
        assert _response(probe) == (503, {"status": "shutting_down"})
    assert process.wait(timeout=15) == 0
