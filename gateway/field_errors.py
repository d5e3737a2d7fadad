"""A body, query or path value Litestar refused, as a 400 that names the field.

Litestar decodes the bodies of the plugin and seed 004 endpoints (``JSONBody[...]``) and, on a
wrong field, raises ``ValidationException("Validation failed for POST /v1/memory/store")``:
the field is only in ``extra``, which our envelope did not carry, so a client saw
``param: null``. The core endpoints name it (gateway/wire.py); this says it the same way.

``extra`` is Litestar's list of ``{"message", "key"?, "source"?}``. ``key`` is the field path
(``items[0].content``) with the handler's ``data.`` prefix stripped, or ``data`` itself when
msgspec failed on the body object as a whole (a missing or unknown field, the wrong JSON type).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.errors import BadRequest

_OBJECT_FIELD = re.compile(r"Object (missing required|contains unknown) field `([^`]+)`")
_WHOLE_BODY = "data"


def field_error(problems: object, fallback: str) -> BadRequest:
    """The first named field is ``param``; the message lists every problem (usually one)."""
    listed = problems if isinstance(problems, list | tuple) else ()
    named = [_named(problem) for problem in listed if isinstance(problem, Mapping)]
    if not named:
        return BadRequest(fallback)
    param = next((path for path, _ in named if path), None)
    return BadRequest("; ".join(message for _, message in named), param=param)


def _named(problem: Mapping[str, object]) -> tuple[str | None, str]:
    """``(field path or None, message)`` for one of Litestar's error messages."""
    message = str(problem.get("message", "invalid value"))
    key = problem.get("key")
    path = "" if key in (None, _WHOLE_BODY) else str(key)
    field = _OBJECT_FIELD.match(message)
    if field:
        name = f"{path}.{field.group(2)}" if path else field.group(2)
        what = "missing required" if field.group(1) == "missing required" else "unknown"
        return name, f"{what} field '{name}'"
    if not path:
        return None, f"invalid request body: {message}"
    return path, f"invalid value for '{path}': {message}"
