"""A quick yes for the JSON Schemas of the call path; jsonschema keeps the last word.

``jsonschema`` walks a schema with a fresh validator per level and costs 15–45 µs for the small
schemas of a call (docs/performance.md). fastjsonschema compiles a schema into plain Python
once and checks it in a few microseconds, but it implements drafts 4–7, not 2020-12, and its
formats differ. So ``SchemaGate`` trusts only its *yes*, and only for schemas whose keywords
mean the same in draft 7 and 2020-12; any *no*, and any other schema, goes to jsonschema,
which decides and names the errors. A call is therefore refused exactly when jsonschema
refuses it (tests/unit/test_fastschema.py checks that property on random documents).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

__all__ = ["SchemaGate", "compile_check"]

Check = Callable[[Any], bool]

# Keywords with one meaning in draft 7 and draft 2020-12 (annotations included). Anything else
# (format, $ref, $defs, prefixItems, dependent*, unevaluated*, if/then/else ...) stays with
# jsonschema alone.
_SHARED_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "minLength", "maxLength",
     "minItems", "maxItems", "items", "pattern", "enum", "const", "minimum", "maximum",
     "exclusiveMinimum", "exclusiveMaximum", "minProperties", "maxProperties",
     "description", "title", "examples", "$comment", "default", "deprecated", "readOnly",
     "writeOnly", "$schema", "$id"}
)  # fmt: skip
_SCHEMA_VALUED = frozenset({"additionalProperties", "items"})


def _only_shared_keywords(schema: Any) -> bool:
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not set(schema) <= _SHARED_KEYWORDS:
        return False
    if isinstance(schema.get("items"), list):  # tuple form: prefixItems in 2020-12
        return False
    # Python's == makes 1 and True equal, JSON Schema does not: only string enums and consts.
    values = [*schema.get("enum", []), *([schema["const"]] if "const" in schema else [])]
    if not all(isinstance(v, str) for v in values):
        return False
    nested = [schema[k] for k in _SCHEMA_VALUED if k in schema]
    nested += list(schema.get("properties", {}).values())
    return all(_only_shared_keywords(s) for s in nested)


def compile_check(schema: Any) -> Check | None:
    """A check that is true only where jsonschema finds no error, or None for a schema that uses
    a keyword whose meaning differs between the drafts."""
    if not _only_shared_keywords(schema):
        return None
    draft7 = (
        {k: v for k, v in schema.items() if k != "$schema"} if isinstance(schema, dict) else schema
    )
    try:
        validate = _compiled(orjson.dumps(draft7, option=_CANONICAL))
    except TypeError:  # not plain JSON data (a YAML date, say): jsonschema alone decides
        return None
    if validate is None:
        return None

    def check(instance: Any) -> bool:
        try:
            validate(instance)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    return check


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
"""Sorted keys, and a TypeError for anything but plain JSON data (dates included)."""


@functools.lru_cache(maxsize=1024)
def _compiled(schema_json: bytes) -> Callable[[Any], Any] | None:
    """fastjsonschema's validator for one schema, kept by its canonical JSON: compiling writes
    and executes Python source (milliseconds), and a reload or a second app on the same
    configuration meets the same schemas again."""
    try:
        return fastjsonschema.compile(
            orjson.loads(schema_json), use_default=False, use_formats=False
        )
    except fastjsonschema.JsonSchemaDefinitionException:
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
