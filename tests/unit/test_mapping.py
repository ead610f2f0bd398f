from __future__ import annotations

import pytest

from gateway.mapping import IDENTITY, MappingError, compile_mapping


def test_absent_mapping_passes_payload_through() -> None:
    data = {"a": 1}
    assert compile_mapping(None) is IDENTITY
    assert compile_mapping(None).apply(data) is data


def test_paths_constants_defaults_and_conversions() -> None:
    mapping = compile_mapping(
        {
            "person.aac002": "id_number",
            "person.xm": "name",
            "channel": {"const": "01"},
            "year": {"from": "period.year", "as": "string"},
            "page": {"from": "paging.page", "default": 1},
            "first": "items.0.code",
        }
    )
    out = mapping.apply(
        {
            "id_number": "X",
            "name": "N",
            "period": {"year": 2024},
            "items": [{"code": "c1"}],
        }
    )
    assert out == {
        "person": {"aac002": "X", "xm": "N"},
        "channel": "01",
        "year": "2024",
        "page": 1,
        "first": "c1",
    }


def test_missing_source_without_default_is_omitted() -> None:
    assert compile_mapping({"a": "missing.path"}).apply({"x": 1}) == {}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"a": ""}, "a"),
        ({"a..b": "x"}, "a..b"),
        ({"a": 3}, "a"),
        ({"a": {"const": 1, "from": "x"}}, "a"),
        ({"a": {"default": 1}}, "a"),
        ({"a": {"from": "x", "as": "date"}}, "a"),
        ({"a": {"from": "x", "bogus": 1}}, "a"),
    ],
)
def test_bad_mappings_name_the_entry(spec: dict[str, object], field: str) -> None:
    with pytest.raises(MappingError) as info:
        compile_mapping(spec)
    assert info.value.field == field
