"""The layers hold: ``adapters/`` sits below ``gateway/``, and no module imports its own importer.

Imports are read from the source with ``ast`` (every ``import`` anywhere in a module: at the
top, inside functions, and under ``if TYPE_CHECKING:``), so a cycle that only type checkers
or a lazy import would close still counts. A second test imports each layer in order, each
module first in a fresh interpreter state, so a cycle Python itself would trip on fails too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "adapters")

# What adapters may use of the gateway: leaves that know nothing of adapters. A name ending in
# "." admits the package and everything under it.
ADAPTERS_MAY_IMPORT = (
    "gateway.config",  # Provider, Timeouts (re-exported by the package from config.upstreams)
    "gateway.config.",
    "gateway.errors",  # the error tree adapters raise
    "gateway.contract",  # Operation, WireProtocol, Native: the wire contract both sides share
    "gateway.translate",  # the package's __init__ only: pure OpenAI-chat shapes and SSE framing
    "gateway.wire",  # imported by gateway.translate for the Usage it reports
)

# Adapter modules the gateway may name: the contract, the built-ins' list, and the shared
# HTTP plumbing (the pooled connector is built with the app's session). Everything else in
# adapters/ is an implementation, reached only through the registry.
ADAPTER_INFRASTRUCTURE = frozenset(
    {
        "adapters.base",
        "adapters.builtin",
        "adapters.http",
        "adapters.h1",
        "adapters.keepalive",
        "adapters.connections",
        "adapters.streams",
    }
)


def modules() -> dict[str, Path]:
    """Every module of the layered packages, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: Iterable[str]) -> Iterator[str]:
    """The layered modules ``name`` imports: a ``from pkg import sub`` names ``pkg.sub``."""
    known = set(known)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # ``from pkg import sub`` where sub is a module: the edge goes to the module;
            # where it is a name: to the package (both are tried; only known modules count).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    """Every import between gateway and adapters modules: module level, in functions and
    under TYPE_CHECKING alike, with no exceptions."""
    found = modules()
    return {name: set(imported(name, path, found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[frozenset[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(frozenset(component))
    return out


def _allowed(target: str) -> bool:
    return target.startswith("adapters") or any(
        target == allowed or (allowed.endswith(".") and target.startswith(allowed))
        for allowed in ADAPTERS_MAY_IMPORT
    )


def test_adapters_import_only_the_gateways_leaf_modules() -> None:
    edges = graph()
    # Everything adapters reach, however indirectly, stays in the adapter layer or the leaves.
    reached: set[str] = set()
    todo = [name for name in edges if name.startswith("adapters")]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo.extend(edges[name])
    outside = sorted(
        f"{name} imports {target}"
        for name in reached
        for target in edges[name]
        if not _allowed(target)
    )
    assert not outside, "adapters/ reaches past its leaves:\n" + "\n".join(outside)


def test_adapters_base_knows_no_implementation() -> None:
    edges = graph()
    assert {t for t in edges["adapters.base"] if t.startswith("adapters")} == set()
    # One module lists the built-ins; nothing else in the gateway names an implementation.
    implementations = {
        name
        for name in edges
        if name.startswith("adapters.") and name not in ADAPTER_INFRASTRUCTURE
    }
    naming = sorted(
        f"{name} imports {target}"
        for name, targets in edges.items()
        if name.startswith("gateway")
        for target in targets
        if target in implementations
    )
    assert naming == [], "the gateway names adapter implementations:\n" + "\n".join(naming)


# Small modules named after their concept (../shared/STYLE.md): past this, split by concept.
MAX_MODULE_LINES = 500


def test_no_module_in_gateway_or_adapters_is_over_500_lines() -> None:
    long = sorted(
        f"{name}: {lines} lines"
        for name, path in modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    )
    assert not long, "split these by concept:\n" + "\n".join(long)


def test_no_import_cycles_in_gateway_and_adapters() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(sorted(c)) for c in found)


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [frozenset({"a", "b", "c"})]


def test_each_layer_imports_first_in_a_fresh_interpreter() -> None:
    """The layers in order, each module imported alone first: Python's own cycle check."""
    layered = sorted(modules(), key=lambda n: (not n.startswith("gateway.contract"), n))
    order = ["gateway.contract", "gateway.errors", "adapters.base", "adapters.http"]
    order += [n for n in layered if n.startswith("adapters") and n not in order]
    order += ["gateway.forwarder", "gateway.app"]
    script = (
        "import importlib, sys\n"
        f"for name in {order!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('gateway', 'adapters')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
