"""Child processes for the benchmarks: spawn, wait until they answer, measure, stop.

Every server runs in its own session (process group) so stopping it also stops anything it
forked, and every spawned process is registered with a ``Processes`` owner that stops them all
in ``finally``: a benchmark that fails halfway leaves nothing running.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Processes:
    """Owns every process a benchmark starts; ``stop_all`` (or leaving the ``with``) ends them."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 15.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL it. Idempotent."""
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children that outlived the leader (a worker process) go too.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc.alive():
            proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def http_status(url: str, timeout: float = 1.0, headers: Mapping[str, str] | None = None) -> int:
    """The status of a GET, or 0 when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def wait_ready(
    proc: Proc,
    url: str,
    timeout: float,
    interval: float = 0.01,
    headers: Mapping[str, str] | None = None,
) -> float:
    """Poll ``url`` until it answers 200; returns the seconds waited. Raises if the process dies."""
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if http_status(url, timeout=max(interval, 0.5), headers=headers) == 200:
            return time.perf_counter() - started
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}"
            )
        time.sleep(interval)
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout:.0f} s:\n{proc.log_tail()}")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def _cpu_ticks(pid: int, task: str = "") -> int:
    """utime + stime of a process, or of one of its threads (``task``: "task/<tid>/")."""
    try:
        fields = Path(f"/proc/{pid}/{task}stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants (threads included)."""
    return sum(_cpu_ticks(p) for p in _descendants(pid)) / CLOCK_TICKS


def thread_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU of one thread of ``pid`` (default: its main thread, tid == pid)."""
    return _cpu_ticks(pid, f"task/{tid or pid}/") / CLOCK_TICKS


def memory_kb(pid: int, key: str = "VmRSS") -> int:
    """A /proc/PID/status memory line (VmRSS, VmHWM) in kB, summed over the process tree."""
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), for spotting foreign load."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU of this process's waited-for children (wrk runs), from getrusage."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def foreign_load(window: float = 1.0) -> float:
    """Cores busy over ``window`` seconds while this benchmark's own servers sit idle."""
    before = system_busy_seconds()
    time.sleep(window)
    return (system_busy_seconds() - before) / window


def wait_quiet(max_wait: float, threshold: float = 0.1) -> float:
    """Wait (up to ``max_wait`` s) until other processes use under ``threshold`` cores.

    Returns the last load seen. Other work on a two-core machine (a test suite, a build)
    skews every number; waiting it out is cheaper than a rerun.
    """
    deadline = time.monotonic() + max_wait
    load = foreign_load()
    while load >= threshold and time.monotonic() < deadline:
        load = foreign_load(2.0)
    return load


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the servers this run started."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
