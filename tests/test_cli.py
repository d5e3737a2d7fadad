"""The `turnout` command as a user runs it: a real process, the shipped routing.yaml."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.server import listen
from tests.gateway_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            with urllib.request.urlopen(url + "/health", timeout=0.5) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.02)
    raise AssertionError("turnout did not become ready")


def test_serve_with_the_default_routing_yaml_and_stop_cleanly_on_sigterm() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as response:
            assert b'"available":false' in response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0].decode()
    assert process.returncode == 0, output
    assert "OPENAI_API_KEY is not set" in output
    assert "Traceback" not in output


def test_serve_on_a_port_in_use_is_one_line_before_anything_starts() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: server.port: cannot listen on 127.0.0.1:{port}: Address already in use"
    ], result.stderr
    assert "Traceback" not in result.stderr


def test_the_listening_sockets_are_those_uvicorn_would_bind() -> None:
    """``localhost`` is every address it names, all on one port even when the port is 0."""
    sockets = listen("localhost", 0)
    try:
        names = {sock.getsockname()[0] for sock in sockets}
        ports = {sock.getsockname()[1] for sock in sockets}
        expected = {
            info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)
        }
        assert names == expected and len(ports) == 1 and 0 not in ports
    finally:
        for sock in sockets:
            sock.close()
    with pytest.raises(ConfigError, match=r"^server.port: cannot listen on 192.0.2.1:"):
        listen("192.0.2.1", 0)  # TEST-NET-1: an address of no machine here


def test_check_command_from_the_console_script(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "check"], cwd=ROOT, capture_output=True, text=True
    )
    assert ok.returncode == 0 and "routing.yaml: ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: m, targets: [{provider: ghost, model: x}]}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "models[0].targets[0].provider: unknown provider 'ghost'" in result.stderr


def test_check_finds_what_only_the_adapter_kinds_know(tmp_path: Path) -> None:
    """An adapter kind nobody registered, or a key its kind refuses: found before serving."""
    bad = tmp_path / "kinds.yaml"
    bad.write_text(
        "providers:\n"
        "  typo: {kind: opneai, base_url: 'https://api.example.com/v1'}\n"
        "  claude: {kind: anthropic, base_url: 'https://api.anthropic.com',"
        " strip_volatile_prefix: true}\n"
        "models: [{name: m, targets: [{provider: typo, model: x}, {provider: claude, model: y}]}]\n"
    )
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1
    assert "providers.typo.kind: unknown adapter kind 'opneai'" in check.stderr
    assert "providers.claude.strip_volatile_prefix: kind anthropic" in check.stderr
    serve = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad), "--port", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode != 0
    assert "providers.typo.kind: unknown adapter kind 'opneai'" in serve.stderr
    assert "Traceback" not in serve.stderr
