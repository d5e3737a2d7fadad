"""Which SQLite can load sqlite-vec here, decided once at start-up.

This Python's own ``sqlite3`` may be built without ``enable_load_extension`` (it is on the
machines this project runs on), so the store takes the first driver that can actually load
the extension: sqlean.py (a base dependency of turnout), then pysqlite3, then the standard
library. aiosqlite runs whichever it is on its thread through ``Connection(connector)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gateway.errors import DriverError

# (package to install, module to import)
CANDIDATES = (("sqlean.py", "sqlean"), ("pysqlite3", "pysqlite3.dbapi2"), ("sqlite3", "sqlite3"))
# Both packages are turnout's own dependencies: one missing means a broken or partial install.
FIX = "reinstall turnout (pip install -e . in a checkout), whose base install brings it"


@dataclass(frozen=True, slots=True)
class Driver:
    package: str
    module: Any
    extension: str
    sqlite_version: str
    vec_version: str

    def connector(self, path: str) -> Callable[[], sqlite3.Connection]:
        """A function that opens ``path`` with sqlite-vec loaded (for aiosqlite's thread)."""

        def connect() -> sqlite3.Connection:
            # Autocommit: the store says BEGIN IMMEDIATE itself (see gateway/db.py).
            connection = self.module.connect(path, isolation_level=None, check_same_thread=False)
            _load(connection, self.extension)
            return cast(sqlite3.Connection, connection)

        return connect


def extension_path() -> str:
    """``sqlite_vec.loadable_path()``, found without importing the package: its ``__init__``
    imports numpy, which costs 60-200 ms of start-up on the bench machine and must not race the
    memory embedder's background import of it (two threads importing numpy at once broke it:
    "partially initialized module 'numpy._core._multiarray_umath'"). A test checks the two agree.
    """
    spec = importlib.util.find_spec("sqlite_vec")
    if spec is None or spec.origin is None:
        raise DriverError(f"memory: the sqlite-vec package is not installed; {FIX}")
    return str(Path(spec.origin).parent / "vec0")


def find_driver(candidates: tuple[tuple[str, str], ...] = CANDIDATES) -> Driver:
    extension = extension_path()
    problems: list[str] = []
    for package, name in candidates:
        try:
            module = importlib.import_module(name)
        except ImportError:
            problems.append(f"{package} is not installed")
            continue
        try:
            connection = module.connect(":memory:")
            try:
                _load(connection, extension)
                vec_version = connection.execute("SELECT vec_version()").fetchone()[0]
            finally:
                connection.close()
        except (AttributeError, module.Error) as exc:
            problems.append(f"{package} cannot load extensions ({exc})")
            continue
        return Driver(package, module, extension, module.sqlite_version, vec_version)
    raise DriverError(
        "memory: no SQLite driver here can load the sqlite-vec extension: "
        + "; ".join(problems)
        + f". Fix: {FIX} (it brings sqlean.py, a SQLite built with extension loading)"
    )


def _load(connection: Any, extension: str) -> None:
    connection.enable_load_extension(True)
    try:
        connection.load_extension(extension)
    finally:
        # Only our extension: SQL run later cannot load others (load_extension() in a query).
        connection.enable_load_extension(False)
