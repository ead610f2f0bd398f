"""The compiled quick check (fastjsonschema) never says "valid" where jsonschema finds an error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.fastschema import SchemaGate, compile_check
from gateway.http.openapi import CALL_REQUEST_SCHEMA

ID_SCHEMA = {
    "type": "object",
    "required": ["holder_id"],
    "additionalProperties": False,
    "properties": {
        "holder_id": {"type": "string", "pattern": "^[0-9]{17}[0-9X]$"},
        "name": {"type": "string", "minLength": 1, "maxLength": 4},
        "kind": {"enum": ["a", "b"]},
        "year": {"type": "integer"},
        "score": {"type": ["number", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "flag": {"type": "boolean", "description": "annotations do not matter"},
        "fixed": {"const": "x"},
        "open": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}
SCHEMAS = [CALL_REQUEST_SCHEMA, ID_SCHEMA, True, False, {}]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["a", "b", "x", "61", "610102199001011234",
                                               "61010219900101123X", "610102199001011234\n",
                                               "١٢"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(
        st.sampled_from(["holder_id", "name", "kind", "year", "score", "tags", "flag", "fixed",
                         "open", "data", "purpose", "receiving_province", "handling_province",
                         "operation", "case_id", "other"]),
        inner, max_size=6,
    ),
    max_leaves=12,
)  # fmt: skip


@pytest.mark.parametrize("schema", SCHEMAS, ids=["envelope", "id", "true", "false", "empty"])
@settings(max_examples=400, deadline=None)
@given(instance=json_values)
def test_the_quick_yes_is_never_wrong(schema: Any, instance: Any) -> None:
    check = compile_check(schema)
    assert check is not None
    reference = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    if check(instance):  # the quick check may only ever say yes where jsonschema does
        assert reference.is_valid(instance)
    assert SchemaGate(reference).is_valid(instance) == reference.is_valid(instance)


def test_a_valid_envelope_passes_quickly() -> None:
    body: dict[str, Any] = {"receiving_province": "63", "handling_province": "61", "purpose": "核验",
            "data": {"holder_id": "610102199001011234"}, "operation": "verify"}  # fmt: skip
    gate = SchemaGate(Draft202012Validator(CALL_REQUEST_SCHEMA))
    assert gate.compiled
    assert gate.is_valid(body)
    assert list(gate.iter_errors(body)) == []
    body["extra"] = 1
    assert not gate.is_valid(body)
    assert [e.validator for e in gate.iter_errors(body)] == ["additionalProperties"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": "date"},
        {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": "object", "patternProperties": {"^x": {}}, "additionalProperties": False},
        {"enum": [1, True]},
        {"x-vendor": 1},
    ],
)
def test_schemas_outside_the_subset_are_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_check(schema) is None
    gate = SchemaGate(
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    )
    assert not gate.compiled
    if "format" in schema:
        assert not gate.is_valid("2024-02-30")
        assert gate.is_valid("2024-02-29")
