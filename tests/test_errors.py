"""One error tree: every exception class of the gateway lives in gateway/errors.py, on its map.

Read from the source with ``ast``, so a class hidden behind a lazy import counts too. The CLI
client (``gateway/client/``) is left out on purpose: it is standard-library only and talks to
a gateway over HTTP, so it keeps its own errors.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from gateway import errors
from gateway.errors import GatewayError

ROOT = Path(__file__).resolve().parent.parent
ERRORS = ROOT / "gateway" / "errors.py"
OWN_ERRORS = (ROOT / "gateway" / "client",)
BUILTIN_BASES = {"Exception", "BaseException", "OSError", "ValueError", "RuntimeError"}


def class_bases() -> dict[tuple[Path, str], list[str]]:
    """Every class of gateway/ and adapters/, by (file, name), with its bases' last names."""
    found: dict[tuple[Path, str], list[str]] = {}
    for package in ("gateway", "adapters"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    bases = [ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases]
                    found[path, node.name] = bases
    return found


def exception_classes() -> set[tuple[Path, str]]:
    """The classes that derive from an exception, through any chain of bases in the tree."""
    bases = class_bases()
    names = {name: parents for (_, name), parents in bases.items()}
    is_error: dict[str, bool] = {}

    def derives(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name not in names:  # from outside the tree: a builtin, or e.g. aiohttp.ClientError
            return name in BUILTIN_BASES or name.endswith(("Error", "Exception"))
        if name in seen:
            return False
        if name not in is_error:
            is_error[name] = any(derives(base, seen | {name}) for base in names[name])
        return is_error[name]

    return {(path, name) for (path, name), parents in bases.items() if any(map(derives, parents))}


def test_every_exception_class_is_defined_in_errors_py() -> None:
    outside = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path, name in exception_classes()
        if path != ERRORS and not any(path.is_relative_to(own) for own in OWN_ERRORS)
    )
    assert not outside, f"move these to gateway/errors.py: {outside}"


def test_the_docstring_map_names_every_error_class() -> None:
    doc = errors.__doc__ or ""
    classes = [
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    ]
    assert "GatewayError" in classes and len(classes) > 20
    missing = [name for name in classes if f" {name} " not in doc.replace("\n", " ")]
    assert not missing, f"add these to gateway/errors.py's hierarchy map: {missing}"


def test_client_facing_errors_carry_their_status() -> None:
    """The map's bracketed statuses are the classes' own: one place to read them from."""
    doc = errors.__doc__ or ""
    for name, value in vars(errors).items():
        if inspect.isclass(value) and issubclass(value, GatewayError) and f"{name} [" in doc:
            written = doc.split(f"{name} [", 1)[1].split("]", 1)[0]
            if written.isdigit():
                assert int(written) == value.status, name
