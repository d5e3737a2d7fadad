"""A real PostgreSQL on a free loopback port: a throwaway cluster for the shared-store tests.

The binaries come from Debian's package (``apt-get install -y postgresql``, which puts them in
/usr/lib/postgresql/<version>/bin, off PATH); without them the tests that need them skip and
say so. PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user
the package creates (``runuser``). Durability is off (fsync, synchronous_commit): a test
cluster lives for one test run.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

import pytest

INSTALL_HINT = "apt-get install -y postgresql"


def postgres_bin() -> Path | None:
    """The newest installed version's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    def __init__(self, start_timeout: float = 30.0) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            pytest.skip(f"PostgreSQL not installed: {INSTALL_HINT}")
        self.bin = bin_dir
        self.port = _free_port()
        self.start_timeout = start_timeout
        self._as_root = os.geteuid() == 0
        self._dir = Path(tempfile.mkdtemp(prefix="turnout-pg-"))
        self._data = self._dir / "data"
        self._process: subprocess.Popen[bytes] | None = None
        if self._as_root:
            shutil.chown(self._dir, "postgres", "postgres")
        self._run([str(self.bin / "initdb"), "-D", str(self._data), "-U", "turnout",
                   "--auth=trust", "--encoding=UTF8", "--no-sync"])  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://turnout@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on this cluster; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    @property
    def log(self) -> str:
        path = self._dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> PostgresServer:
        command = [
            str(self.bin / "postgres"),
            "-D", str(self._data),
            "-p", str(self.port),
            "-h", "127.0.0.1",
            "-k", str(self._dir),
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=100",
        ]  # fmt: skip
        with (self._dir / "postgres.log").open("ab") as log:
            self._process = subprocess.Popen(
                self._as_postgres(command), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + self.start_timeout
        while not self._accepts():
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not accept within {self.start_timeout}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as in an outage."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # To the postmaster itself: runuser, the parent here as root, passes no signal on.
        pid = self._postmaster_pid() or process.pid
        os.kill(pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait()

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self._data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _accepts(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def _as_postgres(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if self._as_root else command

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(
            self._as_postgres(command), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed:\n{result.stdout}\n{result.stderr}")

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
