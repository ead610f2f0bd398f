"""zeep's result shapes become plain JSON: golden answers through the real WSDL operations, and
properties over generated DataSets, untyped xs:any trees and the value kinds zeep produces.

Set TONGBAN_UPDATE_GOLDEN=1 to rewrite the golden JSON after an intended change, then review.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import html
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import zeep
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree  # type: ignore[import-untyped]
from zeep.xsd.schema import Schema

from adapters.soap_answers import MAX_DEPTH, AnswerShapeError, answer_json, element_json
from adapters.soap_contract import load_wsdl, output_body_type, pick_binding
from tests.adapters.dotnet_backend import (
    BINDING,
    NS,
    SOAP11,
    WSDL_NAME,
    dataset_schema,
    diffgram,
)
from tests.adapters.loopback_backends import WSDL_DIR

ANSWERS = Path(__file__).parent / "golden" / "answers"
CONFIG_WSDL = Path(__file__).resolve().parents[2] / "config" / "wsdl"
_REPR = ("<Schema", "object at 0x", "_value_", "<Element", "Decimal(", "datetime.")


def binding(wsdl: Path, name: str | None) -> Any:
    return pick_binding(load_wsdl(wsdl).wsdl, name)


ASMX = binding(WSDL_DIR / WSDL_NAME, BINDING)
DEGREE = binding(WSDL_DIR / "degree.wsdl", None)
SOCIAL = binding(CONFIG_WSDL / "social-insurance.wsdl", None)


def reply(operation: Any, body: str) -> Any:
    """What zeep hands the adapter for an answer whose Body holds ``body``."""
    envelope = f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body>{body}</soap:Body></soap:Envelope>'
    return operation.process_reply(etree.fromstring(envelope.encode()))


def shaped(operation: Any, body: str, rows: tuple[str, ...] = ()) -> Any:
    return answer_json(reply(operation, body), output_body_type(operation), rows)


def assert_plain(data: Any) -> None:
    text = orjson.dumps(data).decode()
    assert not any(marker in text for marker in _REPR), text[:300]


# --- golden answers -----------------------------------------------------------------------------

GOLDEN_CASES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "asmx_boolean": (ASMX._operations["CheckCertificate"], ()),
    "asmx_int": (ASMX._operations["GetRegistrationCount"], ()),
    "asmx_dataset_typed": (ASMX._operations["QueryRegistrations"], ("QueryRegistrationsResult.Table",)),
    "asmx_dataset_untyped": (ASMX._operations["QueryRegistrations"], ("QueryRegistrationsResult.Table",)),
    "asmx_dataset_empty": (ASMX._operations["QueryRegistrations"], ("QueryRegistrationsResult.Table",)),
    "asmx_dataset_two_tables": (ASMX._operations["QueryRegistrations"], ("QueryRegistrationsResult.Table", "QueryRegistrationsResult.Owner")),
    "asmx_dataset_edited": (ASMX._operations["QueryRegistrations"], ("QueryRegistrationsResult.Table",)),
    "degree_fields": (DEGREE._operations["VerifyDegree"], ()),
    "social_insurance_history": (SOCIAL._operations["GetContributionHistory"], ()),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_answer_matches_golden(name: str) -> None:
    operation, rows = GOLDEN_CASES[name]
    body = (ANSWERS / f"{name}.xml").read_text(encoding="utf-8")
    data = shaped(operation, body, rows)
    assert_plain(data)
    actual = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    path = ANSWERS / f"{name}.json"
    if os.environ.get("TONGBAN_UPDATE_GOLDEN") == "1":
        path.write_bytes(actual)
    assert path.exists(), f"golden file {path.name} missing: run with TONGBAN_UPDATE_GOLDEN=1"
    assert actual == path.read_bytes()


# --- generated DataSets through zeep ------------------------------------------------------------

_NAME = st.from_regex(r"\A[A-Z][A-Z0-9]{0,7}\Z")
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r"),
    min_size=1,
    max_size=12,
)


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, list[dict[str, str]]]:
    """Tables (name → rows), every row with every column of its table (a DataSet's shape)."""
    names = draw(st.lists(_NAME, min_size=1, max_size=3, unique=True))
    tables: dict[str, list[dict[str, str]]] = {}
    for name in names:
        columns = draw(st.lists(_NAME, min_size=1, max_size=4, unique=True))
        cells = draw(
            st.lists(st.lists(_TEXT, min_size=len(columns), max_size=len(columns)), max_size=4)
        )
        tables[name] = [dict(zip(columns, row, strict=True)) for row in cells]
    return tables


def dataset_body(tables: Mapping[str, list[dict[str, str]]], *, typed: bool) -> str:
    schema = ""
    if typed:
        elements = ""
        for table, rows in tables.items():
            columns = list(rows[0]) if rows else ["X"]  # a DataSet writes schema order
            cells = "".join(
                f'<xs:element name="{c}" type="xs:string" minOccurs="0" />' for c in columns
            )
            elements += (
                f'<xs:element name="{table}"><xs:complexType><xs:sequence>{cells}'
                "</xs:sequence></xs:complexType></xs:element>"
            )
        schema = dataset_schema([]).replace(
            '<xs:element name="Table"><xs:complexType><xs:sequence></xs:sequence>'
            "</xs:complexType></xs:element>",
            elements,
        )
    written = "".join(
        f"<{table}>"
        + "".join(f"<{c}>{html.escape(v)}</{c}>" for c, v in row.items())
        + f"</{table}>"
        for table, table_rows in tables.items()
        for row in table_rows
    )
    content = diffgram([{"X": "x"}]).replace(
        '<NewDataSet xmlns=""><Table diffgr:id="Table1" msdata:rowOrder="0"><X>x</X></Table>'
        "</NewDataSet>",
        f'<NewDataSet xmlns="">{written}</NewDataSet>' if written else "",
    )
    return (
        f'<QueryRegistrationsResponse xmlns="{NS}"><QueryRegistrationsResult>{schema}{content}'
        "</QueryRegistrationsResult></QueryRegistrationsResponse>"
    )


@settings(max_examples=60, deadline=None)
@given(tables=datasets(), typed=st.booleans())
def test_any_dataset_becomes_its_tables_of_rows(
    tables: dict[str, list[dict[str, str]]], typed: bool
) -> None:
    operation = ASMX._operations["QueryRegistrations"]
    rows = tuple(f"QueryRegistrationsResult.{table}" for table in tables)
    data = shaped(operation, dataset_body(tables, typed=typed), rows)
    assert data == {"QueryRegistrationsResult": tables}
    assert_plain(data)


# --- untyped xs:any trees ----------------------------------------------------------------------

_trees = st.recursive(
    _TEXT.map(lambda text: ("text", text)),
    lambda children: st.lists(st.tuples(_NAME, children), min_size=1, max_size=4).map(
        lambda items: ("node", items)
    ),
    max_leaves=25,
)


def render(tree: tuple[str, Any], name: str = "Root") -> str:
    kind, content = tree
    if kind == "text":
        return f"<{name}>{html.escape(content)}</{name}>"
    return (
        f"<{name}>"
        + "".join(render(child, child_name) for child_name, child in content)
        + f"</{name}>"
    )


@settings(max_examples=80, deadline=None)
@given(tree=_trees)
def test_untyped_content_becomes_objects_and_arrays_by_name(tree: tuple[str, Any]) -> None:
    element = etree.fromstring(render(tree).encode())
    data = element_json(element)
    assert_plain(data)
    assert _same_shape(data, tree)


def _same_shape(data: Any, tree: tuple[str, Any]) -> bool:
    kind, content = tree
    if kind == "text":
        return bool(data == content)
    if not isinstance(data, dict):
        return False
    grouped: dict[str, list[Any]] = {}
    for name, child in content:
        grouped.setdefault(name, []).append(child)
    if set(data) != set(grouped):
        return False
    for name, children in grouped.items():
        value = data[name]
        if len(children) == 1:
            if not _same_shape(value, children[0]):
                return False
        elif not (
            isinstance(value, list)
            and len(value) == len(children)
            and all(_same_shape(v, c) for v, c in zip(value, children, strict=True))
        ):
            return False
    return True


def test_content_deeper_than_the_limit_is_refused() -> None:
    deep = "<A>" * (MAX_DEPTH + 5) + "x" + "</A>" * (MAX_DEPTH + 5)
    with pytest.raises(AnswerShapeError):
        element_json(etree.fromstring(deep.encode()))
    shallow = "<A>" * (MAX_DEPTH - 5) + "x" + "</A>" * (MAX_DEPTH - 5)
    assert_plain(element_json(etree.fromstring(shallow.encode())))


# --- the value kinds zeep produces ---------------------------------------------------------------

_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        _TEXT,
        st.decimals(allow_nan=False, allow_infinity=False, places=3),
        st.dates(),
        st.datetimes(timezones=st.just(datetime.timezone(datetime.timedelta(hours=8)))),
        st.times(),
        st.timedeltas(min_value=datetime.timedelta(0), max_value=datetime.timedelta(days=400)),
        st.binary(max_size=16),
        st.builds(lambda: Schema(None)),  # type: ignore[no-untyped-call]
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_NAME, inner, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(value=_values)
def test_every_value_kind_has_a_json_form_and_never_a_repr(value: Any) -> None:
    data = answer_json(value, None)
    assert_plain(data)
    _check_scalars(value, data)


def _check_scalars(value: Any, data: Any) -> None:
    if isinstance(value, decimal.Decimal):
        assert data == str(value)
    elif isinstance(value, bytes):
        assert base64.b64decode(data) == value
    elif isinstance(value, float) and not math.isfinite(value):
        assert data in ("NaN", "INF", "-INF")
    elif isinstance(value, datetime.date | datetime.time):
        assert data == value.isoformat()


def test_an_unknown_object_is_refused_rather_than_shown() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque secret=42>"

    with pytest.raises(AnswerShapeError):
        answer_json({"a": Opaque()}, None)


def test_zeep_settings_are_the_adapters() -> None:
    # The operations above were parsed as the adapter parses: strict, no DTD, no external.
    client = load_wsdl(WSDL_DIR / WSDL_NAME)
    assert isinstance(client, zeep.Client)
    assert client.settings.forbid_dtd
    assert client.settings.forbid_external
    assert client.settings.strict
