"""A quick yes for the common JSON Schemas of the call path; jsonschema keeps the last word.

``jsonschema`` walks a schema with a fresh validator per level and costs 15–45 µs for the
small schemas of a call (docs/performance.md). ``SchemaGate`` compiles a schema once into
nested closures when every keyword in it belongs to a small subset whose semantics are copied
here from jsonschema 4 exactly (types as its draft 2020-12 type checker, ``pattern`` with
``re.search``, lengths with ``len``). The compiled check only ever answers "valid"; anything
else, and any schema outside the subset, goes to jsonschema itself, which decides and names
the errors. So a call is refused exactly when jsonschema refuses it.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

__all__ = ["SchemaGate", "compile_check"]

Check = Callable[[Any], bool]

# Keywords that never change the verdict (annotations).
_ANNOTATIONS = frozenset(
    {"description", "title", "examples", "$comment", "default", "deprecated", "readOnly",
     "writeOnly", "$schema", "$id"}
)  # fmt: skip


class _Unsupported(Exception):
    """The schema uses something the compiled check does not copy: jsonschema only."""


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Number)


_TYPES: Mapping[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": _is_integer,
    "number": _is_number,
}


def _compile(schema: Any) -> Check:
    if schema is True:
        return lambda value: True
    if schema is False:
        return lambda value: False
    if not isinstance(schema, dict):
        raise _Unsupported
    checks: list[Check] = []
    for keyword, argument in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        checks.append(_keyword(keyword, argument, schema))
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    all_checks = tuple(checks)
    return lambda value: all(check(value) for check in all_checks)


def _keyword(keyword: str, argument: Any, schema: Mapping[str, Any]) -> Check:
    if keyword == "type":
        names = [argument] if isinstance(argument, str) else argument
        if not isinstance(names, list) or not all(n in _TYPES for n in names):
            raise _Unsupported
        type_checks = tuple(_TYPES[n] for n in names)
        if len(type_checks) == 1:
            return type_checks[0]
        return lambda value: any(check(value) for check in type_checks)
    if keyword == "required":
        if not isinstance(argument, list) or not all(isinstance(k, str) for k in argument):
            raise _Unsupported
        names = tuple(argument)
        return lambda value: not isinstance(value, dict) or all(k in value for k in names)
    if keyword == "properties":
        if not isinstance(argument, dict):
            raise _Unsupported
        subs = {str(k): _compile(v) for k, v in argument.items()}

        def properties(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            for name, check in subs.items():
                if name in value and not check(value[name]):
                    return False
            return True

        return properties
    if keyword == "additionalProperties":
        if "patternProperties" in schema:
            raise _Unsupported
        known = frozenset(schema.get("properties", {}))
        extra = _compile(argument)
        if argument is False:
            return lambda value: not isinstance(value, dict) or known.issuperset(value)
        return lambda value: (
            not isinstance(value, dict) or all(extra(v) for k, v in value.items() if k not in known)
        )
    if keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        if not _is_integer(argument):
            raise _Unsupported
        bound = int(argument)
        kind: type[str] | type[list[Any]] = str if keyword.endswith("Length") else list
        if keyword.startswith("min"):
            return lambda value: not isinstance(value, kind) or len(value) >= bound
        return lambda value: not isinstance(value, kind) or len(value) <= bound
    if keyword == "pattern":
        if not isinstance(argument, str):
            raise _Unsupported
        search = re.compile(argument).search
        return lambda value: not isinstance(value, str) or search(value) is not None
    if keyword == "items":
        item = _compile(argument)
        return lambda value: not isinstance(value, list) or all(item(v) for v in value)
    if keyword in ("enum", "const"):
        # Strings only: jsonschema's equality has its own rules for numbers and booleans.
        options = argument if keyword == "enum" else [argument]
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise _Unsupported
        allowed = frozenset(options)
        return lambda value: isinstance(value, str) and value in allowed
    raise _Unsupported


def compile_check(schema: Any) -> Check | None:
    """A check that is true only where jsonschema finds no error, or None when the schema
    uses a keyword outside the copied subset (``format``, ``$ref``, ``oneOf``, ...)."""
    try:
        return _compile(schema)
    except (_Unsupported, re.error):
        return None


class SchemaGate:
    """jsonschema's verdict on one schema, with the compiled check as the quick yes."""

    __slots__ = ("_check", "validator")

    def __init__(self, validator: Draft202012Validator) -> None:
        self.validator = validator
        self._check = compile_check(validator.schema)

    @property
    def compiled(self) -> bool:
        return self._check is not None

    def is_valid(self, instance: Any) -> bool:
        check = self._check
        if check is not None and check(instance):
            return True
        return bool(self.validator.is_valid(instance))

    def iter_errors(self, instance: Any) -> Iterator[ValidationError]:
        check = self._check
        if check is not None and check(instance):
            return iter(())
        return self.validator.iter_errors(instance)
