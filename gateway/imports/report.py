"""What an import produced: routing.yaml sections with their comments, and what it could not map.

The importers (``litellm``, ``llama_swap``) are pure: a parsed foreign config in, an ``Imported``
out. ``render`` turns it into a commented routing.yaml; ``document`` into the plain mapping
``gateway.config.loading.from_mapping`` validates (what the tests check).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of a mapping section (``key``), or one item of a list section (``key`` None)."""

    key: str | None
    value: Any
    # Written on the line(s) above the entry: where it came from, what to check.
    comment: str = ""


@dataclass(slots=True)
class Section:
    """A top-level routing.yaml key; a list section (``models``) has entries without keys."""

    name: str
    comment: str = ""
    entries: list[Entry] = field(default_factory=list)

    def add(self, key: str | None, value: Any, comment: str = "") -> None:
        self.entries.append(Entry(key, value, comment))


@dataclass(slots=True)
class Imported:
    """A foreign config mapped to turnout's: the sections to write, and the report."""

    # Which tool the config is for, in words ("LiteLLM", "llama-swap").
    tool: str
    sections: list[Section] = field(default_factory=list)
    # What has no turnout equivalent or needs a decision, one line each, naming its key path.
    unmapped: list[str] = field(default_factory=list)
    # Mapped, but not exactly: what the user should review.
    approximations: list[str] = field(default_factory=list)

    def section(self, name: str, comment: str = "") -> Section:
        """The section called ``name``, created (with ``comment``) on first use."""
        for section in self.sections:
            if section.name == name:
                return section
        created = Section(name, comment)
        self.sections.append(created)
        return created

    def skip(self, where: str, why: str) -> None:
        _once(self.unmapped, f"{where}: {why}")

    def approximate(self, where: str, how: str) -> None:
        _once(self.approximations, f"{where}: {how}")


def _once(lines: list[str], line: str) -> None:
    if line not in lines:
        lines.append(line)


def document(imported: Imported) -> dict[str, Any]:
    """The routing document as plain data (YAML's data model), sections in order."""
    doc: dict[str, Any] = {}
    for section in imported.sections:
        if not section.entries:
            continue
        if all(e.key is None for e in section.entries):
            doc[section.name] = [e.value for e in section.entries]
        else:
            doc[section.name] = {e.key: e.value for e in section.entries}
    return doc


def render(imported: Imported, source: str, command: str) -> str:
    """A commented routing.yaml: a header with the report, then each section."""
    lines = [
        f"# turnout routing file imported from {imported.tool} config {source} by `{command}`.",
        "# Review it, then validate it: turnout check <this file>",
        "# Keys not written here keep their defaults; the shipped routing.yaml documents each.",
    ]
    lines += _listed("Mapped approximately (check these):", imported.approximations)
    lines += _listed(
        "Not mapped (no turnout equivalent, or a decision for you):", imported.unmapped
    )
    for section in imported.sections:
        if not section.entries:
            continue
        lines.append("")
        lines += _comment(section.comment, "")
        lines.append(f"{section.name}:")
        for entry in section.entries:
            lines += _comment(entry.comment, "  ")
            lines += ["  " + line for line in _dump_entry(entry).splitlines()]
    return "\n".join(lines) + "\n"


def report_lines(imported: Imported) -> list[str]:
    """What ``turnout import`` prints: the approximations, then what was not mapped."""
    lines = [f"approximate: {line}" for line in imported.approximations]
    lines += [f"not mapped: {line}" for line in imported.unmapped]
    return lines


def _listed(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    return ["#", f"# {title}", *(f"#   - {item}" for item in items)]


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()] if text else []


class _Dumper(yaml.SafeDumper):
    """Lists indented under their key, as the shipped routing.yaml writes them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump_entry(entry: Entry) -> str:
    if entry.key is None:
        value: Any = [entry.value]
    else:
        value = {entry.key: entry.value}
    # Flow style for leaf collections ({provider: x, model: y}, short argument lists), block
    # style for the entry itself.
    leaf = not isinstance(entry.value, dict | list) and entry.key is not None
    return yaml.dump(
        value,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False if leaf else None,
        width=100,
        allow_unicode=True,
    )
