"""JSON Schema checks for tool arguments and results (the ``jsonschema`` package).

A schema is compiled once, when its tool is registered; a tool whose schema is itself invalid
is refused then, not on its first call. The dialect comes from ``$schema`` (default: 2020-12).
Remote ``$ref``s are never fetched: jsonschema's ``referencing`` retrieves nothing by itself,
which also keeps schemas from becoming a way to make the gateway open URLs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

# Past this many problems the caller has enough to fix; the rest would only be noise.
_MAX_ERRORS = 10


class Schema:
    """A compiled JSON Schema. Raises ValueError (naming ``what``) for an invalid schema."""

    __slots__ = ("_validator", "raw")

    def __init__(self, raw: dict[str, Any], what: str = "schema") -> None:
        # Imported with the first schema, not with the tools plugin: jsonschema (and its
        # referencing, rpds, attrs) cost 20-60 ms of `turnout serve`'s start-up on the bench
        # machine, for a gateway whose registry may hold no tool at all (issue 13).
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for

        cls = validator_for(raw, default=Draft202012Validator)
        try:
            cls.check_schema(raw)
        except SchemaError as exc:
            raise ValueError(f"{what} is not a valid JSON Schema: {exc.message}") from None
        self.raw = raw
        self._validator: Validator = cls(raw, format_checker=cls.FORMAT_CHECKER)

    def errors(self, instance: Any) -> list[str]:
        """Every way ``instance`` misses the schema, each led by where (``$.city``)."""
        return [problem.text for problem in self.problems(instance)]

    def problems(self, instance: Any) -> list[Problem]:
        found = sorted(
            self._validator.iter_errors(instance), key=lambda e: [str(p) for p in e.path]
        )
        return [_problem(e) for e in found[:_MAX_ERRORS]]


class Problem(NamedTuple):
    # "$.city: 7 is not of type 'string'"
    text: str
    # The path below the instance that is wrong (".city", "[0].name", "" for the instance), a
    # missing required property named itself rather than the object lacking it.
    field: str


def _problem(error: Any) -> Problem:
    at = _path(error.absolute_path)
    field = at
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        field += _path(missing[:1])
    return Problem(f"${at}: {error.message}", field)


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
