"""`turnout check` and `turnout serve` agree on every routing file: check runs every start-up
check serve runs (gateway/preflight.py), and serve refuses a configuration problem with one
line naming the key path and exit status 2, never a traceback.

Each case is a real `turnout check` and a real `turnout serve --port 0`, stopped with SIGTERM
once it is up: the shipped routing.yaml, the ones under deploy/, and tests/configs/*.yaml
(whose `refused-*` files must be refused).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "configs"


@dataclass(frozen=True)
class Case:
    path: str
    env: dict[str, str]


def _env(**extra: str) -> dict[str, str]:
    """No provider keys and no TURNOUT_* settings of whoever runs the tests."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("TURNOUT_")
    }
    return {**env, **extra}


def _config_file(path: Path) -> Callable[[Path], Case]:
    return lambda tmp: Case(str(path.relative_to(ROOT)), _env())


def _docker(**env: str) -> Callable[[Path], Case]:
    def case(tmp: Path) -> Case:
        return Case("deploy/docker/routing.yaml", _env(TURNOUT_DATABASE=str(tmp / "t.db"), **env))

    return case


def _k8s(tmp: Path) -> Case:
    """The cluster's file, with its database (a pod's volume) moved somewhere writable here."""
    manifest = yaml.safe_load((ROOT / "deploy/k8s/configmap.yaml").read_text())
    routing = yaml.safe_load(manifest["data"]["routing.yaml"])
    routing["server"]["database"] = str(tmp / "k8s.db")
    path = tmp / "k8s-routing.yaml"
    path.write_text(yaml.safe_dump(routing))
    return Case(str(path), _env(TURNOUT_ADMIN_KEY="adm-secret"))


# Each case by name, made in the test's tmp dir.
CASES: dict[str, Callable[[Path], Case]] = {
    **{f"tests/configs/{p.name}": _config_file(p) for p in sorted(CONFIGS.glob("*.yaml"))},
    "routing.yaml": _config_file(ROOT / "routing.yaml"),
    "deploy/docker/routing.yaml (admin key set)": _docker(TURNOUT_ADMIN_KEY="adm-secret"),
    "deploy/docker/routing.yaml (no keys)": _docker(),
    "deploy/k8s/configmap.yaml": _k8s,
}


def turnout(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass(frozen=True)
class Served:
    started: bool
    returncode: int
    output: str


def serve(case: Case, timeout: float = 60.0) -> Served:
    """`turnout serve` on a free port: up (then stopped with SIGTERM), or refused."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", case.path, "--port", "0"],
        cwd=ROOT,
        env=case.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    lines: list[str] = []
    started = False
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Application startup complete" in line:
                started = True
                process.send_signal(signal.SIGTERM)
        process.wait()
    finally:
        killer.cancel()
    return Served(started, process.returncode, "".join(lines))


def _error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize("name", list(CASES))
def test_check_and_serve_agree_on_every_shipped_and_test_config(name: str, tmp_path: Path) -> None:
    case = CASES[name](tmp_path)
    check = turnout("check", case.path, env=case.env)
    served = serve(case)
    assert "Traceback" not in check.stderr + served.output, served.output
    if check.returncode == 0:
        assert served.started and served.returncode == 0, served.output
    else:
        assert check.returncode == 1, check.stderr
        assert not served.started and served.returncode == 2, served.output
        # The same one line, naming the key path (or the refusal) in both.
        assert _error_line(served.output) == _error_line(check.stderr)
    refused = Path(case.path).name.startswith("refused-") or name.endswith("(no keys)")
    assert (check.returncode != 0) == refused, check.stdout + check.stderr


def test_memory_without_numpy_is_refused_by_check_and_serve_alike(tmp_path: Path) -> None:
    """The base install lacks the memory extra: enabling memory names what to install."""
    hide = tmp_path / "hide-numpy"
    hide.mkdir()
    # find_spec() answers None and import fails for a module set to None in sys.modules.
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['numpy'] = None\n")
    case = Case("tests/configs/plugins.yaml", _env(PYTHONPATH=str(hide)))
    check = turnout("check", case.path, env=case.env)
    served = serve(case)
    assert check.returncode == 1, check.stdout
    assert "memory: the local embedding model is not installed (numpy)" in check.stderr
    assert not served.started and served.returncode == 2, served.output
    assert _error_line(served.output) == _error_line(check.stderr)
    assert "Traceback" not in served.output


def test_an_unknown_tool_executor_is_refused_by_check_and_serve_alike(tmp_path: Path) -> None:
    """Executor kinds are registered at startup (register_tools takes the running gateway),
    but with only the built-in plugins enabled check knows them all: both refuse alike, serve
    in one line, not Litestar's traceback of the lifespan."""
    config = tmp_path / "routing.yaml"
    config.write_text(
        "server: {database: ':memory:'}\n"
        "plugins: {enabled: [tools]}\n"
        "tools: {registry: [{id: x, executor: no-such-executor, target: y}]}\n"
    )
    case = Case(str(config), _env())
    check = turnout("check", case.path, env=case.env)
    assert check.returncode == 1, check.stdout
    line = _error_line(check.stderr)
    assert line.endswith(
        "tools.registry[0] (x): unknown executor 'no-such-executor' (known: http, mcp, python)"
    )
    served = serve(case)
    assert not served.started and served.returncode == 2, served.output
    assert _error_line(served.output) == line
    assert "Traceback" not in served.output


def test_check_names_an_unknown_memory_backend_as_serve_does() -> None:
    """Backends come from every enabled plugin's register_memory_backends; check collects
    them as startup does, so an unknown name no longer waits for serve to be found."""
    case = CASES["tests/configs/refused-memory-unknown-backend.yaml"](Path("."))
    check = turnout("check", case.path, env=case.env)
    assert check.returncode == 1, check.stdout
    line = _error_line(check.stderr)
    assert line.endswith(
        "memory.backend: unknown backend 'no-such-backend' (known: postgresql, sqlite-vec)"
    )
    served = serve(case)
    assert not served.started and served.returncode == 2, served.output
    assert _error_line(served.output) == line


def test_each_unset_provider_key_is_said_once_at_start() -> None:
    """The shipped routing.yaml names cloud providers whose keys are unset here: one warning
    line each, not one from the config check and another from the first probe."""
    served = serve(Case("routing.yaml", _env()))
    assert served.started, served.output
    unset = set(re.findall(r"\$\{([A-Z_]+_API_KEY)\}", (ROOT / "routing.yaml").read_text()))
    assert len(unset) >= 5
    for variable in unset:
        lines = [line for line in served.output.splitlines() if variable in line]
        assert len(lines) == 1, "\n".join(lines)
