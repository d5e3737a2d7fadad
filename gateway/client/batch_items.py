"""The items of a ``turnout batch`` file: JSON Lines, a JSON or YAML list, or CSV.

Each item is a mapping (a bare string is a prompt) with:

- ``prompt`` (the user message) or ``messages`` (a whole OpenAI message list);
- ``id``: optional, defaults to the item's line (JSONL), position (JSON, YAML) or row (CSV),
  counting from 1, so an unchanged file resumes onto the same ids;
- ``model``, ``system``: optional;
- anything else (``temperature``, ``max_tokens``, ``response_format``, ...) goes into the
  request as it is. CSV cells are text, so a cell that reads as JSON (``0.2``, ``true``,
  ``{"type": "json_object"}``) is sent as that value; empty cells are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".csv": "csv",
}
RESERVED = ("id", "prompt", "messages", "model", "system")


class ItemError(Exception):
    """The input cannot be run; the message names the file and the line, item or row."""


@dataclass(frozen=True, slots=True)
class Item:
    id: Any  # as written in the file (a string or a number), or the default position
    messages: list[dict[str, Any]]
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What resume compares: ids 7 and "7" are the same item."""
        return str(self.id)


def format_of(path: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        known = ", ".join(FORMATS)
        raise ItemError(
            f"{path}: cannot tell the format from {path.suffix or 'no suffix'!r} "
            f"(known: {known}); pass --format"
        )
    return found


def read_items(path: Path, fmt: str | None = None) -> list[Item]:
    kind = format_of(path, fmt)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ItemError(f"{path}: cannot read: {exc}") from None
    readers = {"jsonl": _jsonl, "json": _json, "yaml": _yaml, "csv": _csv}
    items = [_item(f"{path}:{where}", where, raw) for where, raw in readers[kind](path, text)]
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.key in seen:
            raise ItemError(f"{path}: id {item.id!r} appears twice; ids must be unique to resume")
        seen[item.key] = index
    return items


def _jsonl(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise ItemError(f"{path}:{number}: invalid JSON: {exc}") from None


def _json(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ItemError(f"{path}: invalid JSON: {exc}") from None
    return _listed(path, data)


def _yaml(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ItemError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    return _listed(path, data)


def _listed(path: Path, data: Any) -> Iterator[tuple[int, Any]]:
    if data is None:
        return iter(())
    if not isinstance(data, list):
        raise ItemError(f"{path}: expected a list of items, got {type(data).__name__}")
    return enumerate(data, 1)


def _csv(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        return
    if "prompt" not in reader.fieldnames and "messages" not in reader.fieldnames:
        raise ItemError(
            f"{path}: the header needs a prompt column (has: {', '.join(reader.fieldnames)})"
        )
    for number, row in enumerate(reader, 1):
        if None in row:
            raise ItemError(f"{path}: row {number} has more cells than the header")
        cells = {name: value for name, value in row.items() if value not in (None, "")}
        if cells:
            yield number, {name: _cell(name, value) for name, value in cells.items()}


def _cell(name: str, value: str) -> Any:
    if name in ("id", "prompt", "model", "system"):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _item(where: str, position: int, raw: Any) -> Item:
    if isinstance(raw, str):
        raw = {"prompt": raw}
    if not isinstance(raw, dict):
        raise ItemError(
            f"{where}: an item is a mapping or a prompt string, not {type(raw).__name__}"
        )
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise ItemError(f"{where}: model: expected a string")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise ItemError(f"{where}: system: expected a string")
    head = [{"role": "system", "content": system}] if system else []
    params = {k: v for k, v in raw.items() if k not in RESERVED}
    item_id = raw.get("id", position)
    if not isinstance(item_id, str | int) or isinstance(item_id, bool):
        raise ItemError(f"{where}: id: expected a string or a number")
    return Item(item_id, head + _messages(where, raw), model or None, params)


def _messages(where: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    prompt, messages = raw.get("prompt"), raw.get("messages")
    if prompt is not None and messages is not None:
        raise ItemError(f"{where}: has both prompt and messages; keep one")
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if prompt is not None:
        raise ItemError(f"{where}: prompt: expected non-empty text")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        return messages
    if messages is not None:
        raise ItemError(f"{where}: messages: expected a non-empty list of message objects")
    raise ItemError(f"{where}: needs a prompt or messages")
