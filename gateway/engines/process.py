"""Engine drivers: how one role's engine is started, health-checked and stopped.

A driver knows mechanics only (spawn, poll, signal); when to call it is the supervisor's
business. Every driver's ``start`` may be cancelled at any await: a cancelled start leaves
nothing running (this is how "stop during start aborts the start" works).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import aiohttp

from adapters.connections import close_idle
from gateway.config.engines import Role
from gateway.engines.child import Child, spawn
from gateway.engines.progress import report_stage
from gateway.errors import EngineStartError


class EngineDriver(Protocol):
    async def start(self) -> int | None:
        """Bring the engine up and return once it is healthy; the pid if turnout owns a process."""
        ...

    async def wait_exit(self) -> int:
        """Return the exit code once the engine dies (never, for engines turnout does not own)."""
        ...

    async def stop(self) -> None:
        """Idempotent; safe whether the engine runs, is starting, or never started."""
        ...

    def exit_detail(self) -> str:
        """What the engine said before it died (the tail of its log), for status and logs."""
        ...


@runtime_checkable
class Sleeper(EngineDriver, Protocol):
    """A driver whose engine can sleep: give back its accelerator memory but keep its process,
    so the next ``start`` wakes it, far cheaper than a cold start (vLLM's sleep mode).

    The supervisor puts an evicted or idle role to sleep instead of stopping it; an explicit
    unload and shutdown still ``stop`` it."""

    async def sleep(self) -> bool:
        """Put the engine to sleep; False when it could not, and was stopped instead."""
        ...


@dataclass(frozen=True, slots=True)
class Launch:
    """What one start adds to a role's command and environment: where its placement put it."""

    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def render_command(
    role_name: str, role: Role, template: Sequence[str], host: str, port: int
) -> list[str]:
    values = {
        "PORT": str(port),
        "MODEL": role.model,
        "HOST": host,
        "CTX": str(role.context),
        "ROLE": role_name,
    }
    rendered = []
    for part in template:
        for key, value in values.items():
            part = part.replace("${" + key + "}", value)
        rendered.append(part)
    return rendered


# While an engine starts, its health is asked at least this often; sooner when it writes to its
# log, which is looked at (a stat: microseconds) this often.
POLL_SECONDS = 0.01
LOG_LOOK_SECONDS = 0.002


class ProcessDriver:
    """An engine process turnout spawns from its kind's command (``llama-server``, ...)."""

    def __init__(
        self,
        role_name: str,
        role: Role,
        command: Sequence[str],
        port: int,
        log_path: Path,
        session: aiohttp.ClientSession,
        warmup: bool = False,
        upstream_model: str = "",
        host: str = "127.0.0.1",
        launch: Callable[[], Awaitable[Launch]] | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._role, self._role_name = role, role_name
        self._poll_seconds = poll_seconds
        # Rendered by the engine kind, with what its capabilities add (a KV cache directory).
        self._command = list(command)
        # Decided anew at each start: where the engine goes (its GPUs) depends on what is free.
        self._launch = launch
        self._host, self._port = host, port
        self._health_url = f"http://{host}:{port}{role.health}"
        self._warmup_url = f"http://{host}:{port}/v1/chat/completions"
        self._warmup = warmup
        self._warmup_model = upstream_model or role_name
        self._log_path = log_path
        self._session = session
        self._process: Child | None = None

    @property
    def command(self) -> Sequence[str]:
        return self._command

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The engine process while it runs (it may be asleep), else None."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> int | None:
        await self.stop()
        self._check_port()
        launch = await self._launch() if self._launch is not None else Launch()
        command = [*self._command, *launch.args]
        placed = "".join(f"{k}={v} " for k, v in launch.env.items())
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as log:
            log.write(
                f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {placed}{' '.join(command)}\n".encode()
            )
            log.flush()
            try:
                # Own session = own process group: stop() signals the engine and its children.
                # The role's own env wins over a placement (gpus.py leaves such a role be).
                self._process = spawn(command, {**os.environ, **launch.env, **self._role.env}, log)
            except OSError as exc:
                raise EngineStartError(f"cannot run {command[0]!r}: {exc.strerror}") from None
        try:
            await self._wait_healthy()
            if self._warmup:
                report_stage("loading")
                await self._warm_up()
        except BaseException:
            await self.stop()
            raise
        return self._process.pid

    def _check_port(self) -> None:
        """Refuse to start where another server already listens: the engine would fail to bind
        (or not, with SO_REUSEPORT) and the health checks would find the other server healthy,
        so the role's requests would go to it."""
        try:
            with socket.socket() as probe:
                # As servers bind: connections of a last run in TIME_WAIT are no conflict.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self._host, self._port))
        except OSError as exc:
            where = f"roles.{self._role_name}.port" if self._role.port else "picked at start"
            raise EngineStartError(
                f"cannot listen on {self._host}:{self._port} ({where}): "
                f"{exc.strerror or exc}; another process holds it"
            ) from None

    async def _warm_up(self) -> None:
        """Make the engine load its model now, so "ready" means a request will be served."""
        body = {
            "model": self._warmup_model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        }
        timeout = aiohttp.ClientTimeout(total=self._role.start_timeout_seconds)
        try:
            async with self._session.post(self._warmup_url, json=body, timeout=timeout) as response:
                text = await response.text()
                if response.status != 200:
                    raise EngineStartError(
                        f"warm-up request answered HTTP {response.status}: {text[:300]}"
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineStartError(
                f"warm-up request failed: {exc.__class__.__name__}: {exc}"
            ) from None

    async def _wait_healthy(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._role.start_timeout_seconds
        timeout = aiohttp.ClientTimeout(total=2)
        last = "no answer yet"
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise EngineStartError(
                    f"exited with code {process.returncode} while starting; log: {self.log_tail()}",
                    process.returncode,
                )
            try:
                async with self._session.get(self._health_url, timeout=timeout) as response:
                    await response.read()
                    if response.status == 200:
                        return
                    last = f"health answered HTTP {response.status}"
                    # Listening but not healthy: llama-server answers 503 while it loads.
                    report_stage("loading")
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc.__class__.__name__
            await self._pause(process)
        raise EngineStartError(
            f"not healthy after {self._role.start_timeout_seconds:g} s ({last}); log: {self.log_tail()}"
        )

    async def _pause(self, process: Child) -> None:
        """Until the next health poll is worth it: the engine wrote to its log, ``poll_seconds``
        passed, or it exited (noticed at the next look).

        Short waits: swap latency is the product. The log is the cue to look again: an engine
        logs as it comes up, and llama-server writes "listening" the moment /health turns
        200, so that poll finds it ready at once, not up to a whole interval later.
        """
        size = self._log_size()
        for _ in range(max(1, round(self._poll_seconds / LOG_LOOK_SECONDS))):
            # A plain sleep: the event loop sets ``returncode`` the moment the engine exits, and
            # a timed-out wait on the exit cost 1.5-2x the CPU (measured), taken from an engine
            # loading on the same cores during the whole swap.
            await asyncio.sleep(LOG_LOOK_SECONDS)
            if process.returncode is not None or self._log_size() != size:
                return

    def _log_size(self) -> int:
        try:
            return self._log_path.stat().st_size
        except OSError:
            return -1

    async def wait_exit(self) -> int:
        process = self._process
        if process is None:
            raise RuntimeError("engine was not started")
        return await process.wait()

    async def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            # Idle keep-alive connections hold llama-server's exit up (see close_idle), and a
            # swap may be waiting for that exit.
            close_idle(self._session, self._host, self._port)
            _signal_group(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self._role.stop_timeout_seconds):
                    await process.wait()
            except TimeoutError:
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        # Children that outlived the leader (same process group) go too.
        _signal_group(process.pid, signal.SIGKILL)
        self._process = None

    def exit_detail(self) -> str:
        return self.log_tail()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "(empty log)"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ExternalDriver:
    """A server turnout does not start (any OpenAI-compatible engine): only its health is ours."""

    def __init__(self, role: Role, session: aiohttp.ClientSession) -> None:
        self._role = role
        self._session = session
        self._stopped = asyncio.Event()
        base = role.base_url.rstrip("/")
        origin = base[: -len("/v1")] if base.endswith("/v1") else base
        self._health_url = origin + role.health

    async def start(self) -> int | None:
        self._stopped.clear()
        deadline = time.monotonic() + self._role.start_timeout_seconds
        timeout = aiohttp.ClientTimeout(total=2)
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                async with self._session.get(self._health_url, timeout=timeout) as response:
                    await response.read()
                    if response.status == 200:
                        return None
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc.__class__.__name__
            await asyncio.sleep(0.1)
        raise EngineStartError(
            f"{self._health_url} not healthy after {self._role.start_timeout_seconds:g} s ({last})"
        )

    async def wait_exit(self) -> int:
        await self._stopped.wait()
        return 0

    async def stop(self) -> None:
        self._stopped.set()

    def exit_detail(self) -> str:
        return ""


class ModelHost(Protocol):
    """An engine server that loads and unloads models on request (Ollama's adapter)."""

    async def load(self, model: str, keep_alive: str | int | None = None) -> None: ...

    async def unload(self, model: str) -> None: ...


class HostedModelDriver:
    """A model inside a server turnout does not start: loading is a request, unloading another.

    ``keep_alive: -1`` keeps the model loaded until turnout unloads it; the supervisor, not
    the server's own timer, decides when a role's memory is given back.
    """

    def __init__(self, role: Role, host: ModelHost) -> None:
        self._role = role
        self._host = host
        self._stopped = asyncio.Event()
        self._loaded = False

    async def start(self) -> int | None:
        self._stopped.clear()
        try:
            async with asyncio.timeout(self._role.start_timeout_seconds):
                await self._host.load(self._role.model, keep_alive=-1)
        except TimeoutError:
            raise EngineStartError(
                f"loading {self._role.model} took over {self._role.start_timeout_seconds:g} s"
            ) from None
        except Exception as exc:
            raise EngineStartError(f"loading {self._role.model} failed: {exc}") from None
        self._loaded = True
        return None

    async def wait_exit(self) -> int:
        await self._stopped.wait()
        return 0

    async def stop(self) -> None:
        self._stopped.set()
        if self._loaded:
            self._loaded = False
            with contextlib.suppress(Exception):
                await self._host.unload(self._role.model)

    def exit_detail(self) -> str:
        return ""
