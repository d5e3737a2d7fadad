"""An engine's process, spawned the cheap way: every swap waits for this spawn.

asyncio forks (copying the gateway's page tables) as soon as anything must run in the child
before ``exec`` (the ``preexec_fn`` that asks for SIGKILL when the gateway dies), and uvloop,
the server's loop, always forks and then waits for the ``exec`` on a pipe. Measured in a
process the size of the gateway (tens of MB resident) on the shared 2-core machine: 20-27 ms
per spawn either way, against 7 ms for ``subprocess.Popen`` with nothing to run in the child,
which spawns by ``vfork``. So the engine is spawned by ``Popen``; "die with the gateway"
(``PR_SET_PDEATHSIG``) is set by util-linux's ``setpriv`` exec'ing the engine (the setting
survives ``exec``; the pid stays the engine's), with the forking ``preexec_fn`` kept only for a
Linux without it; and the exit is seen through a pidfd the event loop watches, so nothing
polls and no thread waits.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO


class Child:
    """A spawned process, its exit awaitable from the event loop it was spawned on."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watch()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs; set the moment the event loop sees it exit."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        # Shielded: a cancelled waiter (a timed-out wait) leaves the exit for the next one.
        return await asyncio.shield(self._exited)

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # No pidfd (not Linux, or a kernel before 5.3): a thread waits instead.
            waiting = loop.create_task(asyncio.to_thread(self._popen.wait))
            waiting.add_done_callback(self._waited)
            return

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            # Readable means exited: this reaps it without blocking.
            self._exit(self._popen.wait())

        loop.add_reader(pidfd, exited)

    def _waited(self, waiting: asyncio.Task[int]) -> None:
        if not waiting.cancelled():
            self._exit(waiting.result())

    def _exit(self, code: int) -> None:
        if not self._exited.done():
            self._exited.set_result(code)


def spawn(
    command: Sequence[str], env: Mapping[str, str], output: IO[bytes], die_with_parent: bool = True
) -> Child:
    """Start ``command`` in a session of its own (its process group is its own to signal),
    writing stdout and stderr to ``output``. Raises OSError when it cannot be run."""
    prefix: tuple[str, ...] = ()
    preexec: Callable[[], None] | None = None
    if die_with_parent and sys.platform.startswith("linux"):
        prefix = setpriv_prefix()
        preexec = None if prefix else _die_with_parent
    if prefix:
        # setpriv would report a missing engine as its own exit code 127: say it as Popen would.
        found = shutil.which(command[0], path=env.get("PATH"))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command[0])
        command = [found, *command[1:]]
    popen = subprocess.Popen(
        [*prefix, *command],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(env),
        preexec_fn=preexec,
    )
    return Child(popen)


@functools.cache
def setpriv_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` when this machine's setpriv has the option (util-linux
    2.33 and later), else (). Asked once per process: a fact of the machine, not state."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    try:
        probe = subprocess.run(
            [*prefix, "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if probe.returncode == 0 else ()


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the gateway dies, however it dies (Linux)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
