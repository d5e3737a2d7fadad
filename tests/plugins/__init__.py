"""Third-party plugin packages the tests install, and the installer they use.

``install`` puts a package where ``importlib.metadata`` finds it, as pip would: its code, and a
``<name>-<version>.dist-info`` with the entry points its pyproject.toml declares. It needs no
build backend and no network (pip needs the ``wheel`` package for setuptools projects, which
this environment does not have), and it leaves the venv alone: the test puts the directory on
``sys.path`` for as long as it runs.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent / "example"


def install(source: Path, site: Path) -> None:
    """Install the project at ``source`` into the directory ``site``."""
    pyproject = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    for package in pyproject["tool"]["setuptools"]["packages"]:
        shutil.copytree(
            source / package, site / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    name, version = project["name"], project["version"]
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines.extend(f"{key} = {value}" for key, value in entries.items())
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
