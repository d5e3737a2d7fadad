"""The servers under test: the fake upstream, turnout, the minimal proxies, LiteLLM.

Each runs in its own process.

A ``Stack`` is what a load generator needs to hit one of them: the chat URL, the model name
to send, the headers, and the process whose CPU and memory to read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Proc, Processes, free_port, wait_ready
from bench.report import RESULTS

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
UPSTREAM_MODEL = "ok"  # the fake upstream's normal-reply scenario
LITELLM_KEY = "sk-turnout-bench"
# Sent to every stack alike; only LiteLLM checks it.
COMMON_HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {LITELLM_KEY}"}


@dataclass
class Stack:
    name: str
    chat_url: str
    model: str
    proc: Proc
    origin: str
    headers: dict[str, str] = field(default_factory=lambda: dict(COMMON_HEADERS))
    ready_seconds: float = 0.0


def start_upstream(procs: Processes, chunks: int = 20, port: int | None = None) -> Stack:
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "tests.fakes.openai_upstream",
        "--port",
        str(port),
        "--chunks",
        str(chunks),
    ]
    proc = procs.spawn("upstream", argv, cwd=ROOT)
    origin = f"http://127.0.0.1:{port}"
    ready = wait_ready(proc, origin + "/health", timeout=30)
    return Stack(
        "direct", origin + "/v1/chat/completions", UPSTREAM_MODEL, proc, origin, ready_seconds=ready
    )


def turnout_config(
    upstream: Stack, database: Path | None = None, plugins: Sequence[str] = ()
) -> str:
    """The shipped defaults in front of ``upstream``; ``plugins`` enabled, if any."""
    server = f"  database: {database}\n" if database is not None else ""
    enabled = f"plugins:\n  enabled: [{', '.join(plugins)}]\n" if plugins else ""
    return f"""\
server:
  log_level: warning
{server}routing:
  retries: 0
providers:
  fake:
    kind: openai
    base_url: {upstream.origin}/v1
    local: true
models:
  - name: bench
    targets:
      - {{provider: fake, model: {UPSTREAM_MODEL}}}
{enabled}"""


def write_turnout_config(upstream: Stack, work: Path) -> Path:
    path = work / "turnout-bench.yaml"
    path.write_text(turnout_config(upstream))
    return path


@dataclass(frozen=True)
class TurnoutBuild:
    """Which turnout code to run: the installed working tree, or a git ref exported to a folder."""

    label: str
    prefix: tuple[str, ...]  # the command up to and including ``serve``
    cwd: Path | None = None

    def argv(self, config: Path, port: int) -> list[str]:
        return [*self.prefix, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]


def working_tree_build() -> TurnoutBuild:
    """``turnout serve`` as installed (editable) in the project venv."""
    return TurnoutBuild("working tree", (str(VENV_BIN / "turnout"), "serve"))


def ref_build(ref: str, work: Path) -> TurnoutBuild:
    """turnout's code at a git ref (``git archive``: read-only, no checkout, no commit).

    Useful while others edit the working tree. Run as ``python -m gateway`` from the export,
    which comes first on ``sys.path``, ahead of the editable install's finder.
    """
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    source = work / f"turnout-{commit}"
    source.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "gateway", "adapters"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return TurnoutBuild(f"{ref} ({commit})", (sys.executable, "-m", "gateway", "serve"), source)


def start_turnout(
    procs: Processes,
    build: TurnoutBuild,
    upstream: Stack,
    work: Path,
    name: str = "turnout",
    config: Path | None = None,
    headers: dict[str, str] | None = None,
) -> Stack:
    """turnout serving ``config`` (default: ``turnout_config``), sent ``headers`` by the load."""
    port = free_port()
    config = config or write_turnout_config(upstream, work)
    proc = procs.spawn(name, build.argv(config, port), cwd=build.cwd or work)
    origin = f"http://127.0.0.1:{port}"
    ready = wait_ready(proc, origin + "/health", timeout=30)
    return Stack(
        "turnout",
        origin + "/v1/chat/completions",
        "bench",
        proc,
        origin,
        headers=dict(headers or COMMON_HEADERS),
        ready_seconds=ready,
    )


def turnout_ready_seconds(
    build: TurnoutBuild,
    upstream: Stack,
    work: Path,
    runs: int = 5,
    plugins: Sequence[str] = (),
) -> list[float]:
    """Spawn ``turnout serve`` and poll /health every 10 ms until 200, ``runs`` times."""
    config = work / "turnout-ready.yaml"
    config.write_text(turnout_config(upstream, work / "turnout-ready.db", plugins))
    times = []
    with Processes(RESULTS / "logs") as procs:
        for i in range(runs):
            port = free_port()
            started = time.perf_counter()
            proc = procs.spawn(
                f"turnout-ready-{i}", build.argv(config, port), cwd=build.cwd or work
            )
            wait_ready(proc, f"http://127.0.0.1:{port}/health", timeout=30, interval=0.01)
            times.append(time.perf_counter() - started)
            procs.stop(proc)
    return times


# --- the minimal proxies (bench/mini_proxy.py) ---------------------------------------------


def start_mini_proxy(procs: Processes, variant: str, upstream: Stack) -> Stack:
    """One of bench/mini_proxy.py's variants; ``asgi-aiohttp`` is the Python limit here."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.mini_proxy",
        "--variant",
        variant,
        "--upstream",
        upstream.origin,
        "--port",
        str(port),
    ]
    proc = procs.spawn(f"mini-{variant}", argv, cwd=ROOT)
    origin = f"http://127.0.0.1:{port}"
    ready = wait_ready(proc, origin + "/health", timeout=30)
    return Stack(
        variant, origin + "/v1/chat/completions", UPSTREAM_MODEL, proc, origin, ready_seconds=ready
    )


# --- LiteLLM -------------------------------------------------------------------------------


def litellm_python() -> Path:
    """Install (once, cached) LiteLLM in its own venv via setup_litellm.sh; its python."""
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "setup_litellm.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench/setup_litellm.sh failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def litellm_config(upstream: Stack) -> str:
    return f"""\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/{UPSTREAM_MODEL}
      api_base: {upstream.origin}/v1
      api_key: sk-unused
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
general_settings:
  master_key: {LITELLM_KEY}
"""


def start_litellm(procs: Processes, upstream: Stack, work: Path, python: Path) -> Stack:
    config = work / "litellm-bench.yaml"
    config.write_text(litellm_config(upstream))
    port = free_port()
    argv = [
        str(python.parent / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network here: use the bundled price map
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "True",
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    started = time.perf_counter()
    proc = procs.spawn("litellm", argv, env=env, cwd=work)
    origin = f"http://127.0.0.1:{port}"
    wait_ready(proc, origin + "/health/liveliness", timeout=180, interval=0.1)
    return Stack(
        "litellm",
        origin + "/v1/chat/completions",
        "bench",
        proc,
        origin,
        ready_seconds=time.perf_counter() - started,
    )
