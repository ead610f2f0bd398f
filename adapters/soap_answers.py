"""A SOAP answer as JSON data, whatever shape zeep hands it over in.

zeep's result for one operation is one of: a ``CompoundValue`` (the response element's children,
or the one child's when the response wraps a single element), a bare scalar (an ``xs:boolean``
result), a list, an lxml element (``xs:any`` content it had no type for), or ``None``; inside
those, ``schema`` fields hold a parsed ``Schema`` object (a .NET DataSet's inline ``xs:schema``)
and ``_value_N`` fields hold ``xs:any``, choice or simple content. ``answer_json`` turns every one
of them into plain JSON under these rules:

- the answer is always the response element's content: when zeep unwrapped a single child, the
  child is put back under its own name (``{"CheckCertificateResult": true}``), so a bare result
  is a named field a route's response mapping can pick;
- ``schema`` objects are dropped (they describe the data; they are not data);
- ``_value_N`` content is merged into its parent: a choice's items become one array per name;
  untyped ``xs:any`` elements become objects by local name, repeated names become arrays,
  attributes are left out; simple content next to attributes becomes ``value``;
- a .NET DataSet (``diffgr:diffgram``) is a set of named tables: ``{"Table": [row, ...]}``,
  whether zeep typed the rows through the inline schema or not; ``diffgr:before`` and
  ``diffgr:errors`` (the previous values of edited rows) are left out;
- decimals, dates, times and durations become strings, bytes become base64, integers beyond
  64 bits strings, NaN and infinities the strings xs:double writes them as;
- declared row paths (``rows:`` of the operation) are always arrays of objects: absent or empty
  is ``[]``, one row is ``[row]``;
- anything else, or content nested deeper than ``MAX_DEPTH``, is ``AnswerShapeError``: an answer
  is never rendered through ``repr``.

Must not: import the gateway beyond its adapter contract; log anything of an answer.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import functools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from lxml import etree  # type: ignore[import-untyped]
from zeep.wsdl.messages.soap import DocumentMessage
from zeep.xsd.elements.builtins import Schema as SchemaElement
from zeep.xsd.elements.element import Element
from zeep.xsd.elements.indicators import Sequence as XsdSequence
from zeep.xsd.schema import Schema
from zeep.xsd.types.builtins import Duration
from zeep.xsd.types.complex import ComplexType
from zeep.xsd.types.simple import AnySimpleType
from zeep.xsd.valueobjects import AnyObject, CompoundValue

__all__ = [
    "MAX_DEPTH",
    "AnswerShapeError",
    "FlatAnswer",
    "answer_json",
    "content_json",
    "element_json",
    "flat_elements",
    "normalise_rows",
    "response_content",
]

MAX_DEPTH: Final = 64
"""Deepest nesting an answer may have; a deployed service's answers are a few levels deep."""
DIFFGRAM_NS: Final = "urn:schemas-microsoft-com:xml-diffgram-v1"
XSD_NS: Final = "http://www.w3.org/2001/XMLSchema"
XSI_NIL: Final = "{http://www.w3.org/2001/XMLSchema-instance}nil"
_DROP: Final = object()

# zeep logs a value it fails to convert, with the value, at ERROR level: an answer's personal
# data must not reach a log that way.
logging.getLogger("zeep").addHandler(logging.NullHandler())
logging.getLogger("zeep").propagate = False
_INT64: Final = 1 << 63
_DURATION = Duration()  # type: ignore[no-untyped-call]


class AnswerShapeError(ValueError):
    """The answer holds something that has no JSON form here (or nests too deep)."""


def answer_json(result: Any, body_type: Any, rows: Sequence[str] = ()) -> Any:
    """zeep's ``result`` as JSON data; ``body_type`` is the xsd type of the operation's response
    element (None when it has none), ``rows`` the declared row paths."""
    return content_json(response_content(result, body_type), rows)


def content_json(content: Any, rows: Sequence[str] = ()) -> Any:
    """The response element's ``content`` (as ``response_content`` gives it, or as
    ``FlatAnswer.read`` does) as JSON data; ``rows`` the declared row paths."""
    data = _value(content, 0)
    if data is _DROP:
        data = None
    if rows:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise AnswerShapeError("declared rows need an answer with fields")
        for path in rows:
            normalise_rows(data, tuple(path.split(".")))
    return data


def response_content(result: Any, body_type: Any) -> Any:
    """The response element's content, with zeep's unwrapping undone.

    zeep hands over the response element's only child instead of the element, and that child's
    only child when it has exactly one and no attributes (zeep.wsdl.messages.soap
    ``SoapMessage.deserialize``); the names it dropped are put back.
    """
    elements = getattr(body_type, "elements", None)
    if not elements or len(elements) != 1:
        return result
    if isinstance(result, CompoundValue) and type(result)._xsd_type is body_type:
        return result
    name, element = elements[0]
    inner = element.type
    if isinstance(result, CompoundValue) and type(result)._xsd_type is inner:
        return {name: result}
    inner_elements = getattr(inner, "elements", None)
    if inner_elements and len(inner_elements) == 1 and not getattr(inner, "attributes", None):
        return {name: {inner_elements[0][0]: result}}
    return {name: result}


def _value(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise AnswerShapeError("the answer nests too deep")
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        # xs:integer has no bound; a JSON encoder has (64 bits): larger ones travel as text.
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, float):
        # JSON has no NaN or infinity; xs:double has (NaN, INF, -INF).
        return value if math.isfinite(value) else _special_float(value)
    if isinstance(value, CompoundValue):
        skip = _schema_fields(type(value))
        return _object(((k, v) for k, v in value.__values__.items() if k not in skip), depth)
    if isinstance(value, Mapping):
        return _object(value.items(), depth)
    if isinstance(value, list | tuple):
        items = [_value(item, depth + 1) for item in value]
        return [item for item in items if item is not _DROP]
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta) or type(value).__name__ == "Duration":
        return str(_DURATION.xmlvalue(value))
    if isinstance(value, datetime.tzinfo):
        offset = value.utcoffset(None)
        return _offset(offset) if offset is not None else None
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, etree.QName):
        return str(value.text)
    if isinstance(value, etree._Element):
        return _element_content(value, depth)
    if isinstance(value, AnyObject):
        return _value(value.value, depth + 1)
    if isinstance(value, Schema):
        return _DROP
    raise AnswerShapeError(f"no JSON form for a {type(value).__name__}")


def _schema_fields(kind: type) -> frozenset[str]:
    """Fields of a zeep type that hold an inline ``xs:schema`` (present or not)."""
    return _schema_fields_of(getattr(kind, "_xsd_type", None))


@functools.lru_cache(maxsize=1024)
def _schema_fields_of(xsd_type: Any) -> frozenset[str]:
    return frozenset(
        name
        for name, element in getattr(xsd_type, "elements", [])
        if isinstance(element, SchemaElement)
    )


def _special_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "INF" if value > 0 else "-INF"


def _offset(offset: datetime.timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{rest:02d}"


def _object(items: Iterable[tuple[Any, Any]], depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in items:
        name = str(key)
        if name.startswith("_value_"):
            _merge_content(out, raw, depth + 1)
            continue
        value = _value(raw, depth + 1)
        if value is not _DROP:
            out[name] = value
    return out


def _merge_content(out: dict[str, Any], raw: Any, depth: int) -> None:
    """``xs:any`` / choice / simple content of an object, merged into it."""
    if raw is None:
        return
    if isinstance(raw, etree._Element):
        _merge_elements(out, [raw], depth)
        return
    if isinstance(raw, list | tuple):
        elements = [item for item in raw if isinstance(item, etree._Element)]
        if elements:
            _merge_elements(out, elements, depth)
        for item in raw:
            if isinstance(item, etree._Element):
                continue
            value = _value(item, depth + 1)
            if isinstance(value, dict):
                for name, field in value.items():
                    _append(out, name, field)
            elif value is not _DROP and value is not None:
                _append(out, "value", value)
        return
    value = _value(raw, depth)
    if isinstance(value, dict):
        for name, field in value.items():
            _add(out, name, field)
    elif value is not _DROP and value is not None:
        _add(out, "value", value)


def _add(out: dict[str, Any], name: str, value: Any) -> None:
    """Set ``name``; a name already present (repeated content) makes an array."""
    if name in out:
        _append(out, name, value)
    else:
        out[name] = value


def _append(out: dict[str, Any], name: str, value: Any) -> None:
    present = out.get(name, _DROP)
    if present is _DROP:
        out[name] = [value]
    elif isinstance(present, list):
        present.append(value)
    else:
        out[name] = [present, value]


def _local(element: Any) -> str:
    return str(etree.QName(element).localname)


def _merge_elements(out: dict[str, Any], elements: Iterable[Any], depth: int) -> None:
    for element in elements:
        if not isinstance(element.tag, str):
            continue  # comments and processing instructions
        namespace = etree.QName(element).namespace
        if namespace == XSD_NS:
            continue  # an inline schema: a description, not data
        if namespace == DIFFGRAM_NS:
            if _local(element) == "diffgram":
                _merge_dataset(out, element, depth + 1)
            continue  # diffgr:before, diffgr:errors
        _add(out, _local(element), _element_content(element, depth + 1))


def _merge_dataset(out: dict[str, Any], diffgram: Any, depth: int) -> None:
    """A DataSet's tables: the diffgram's one child is the DataSet, its children the rows."""
    for dataset in diffgram:
        if not isinstance(dataset.tag, str) or etree.QName(dataset).namespace == DIFFGRAM_NS:
            continue
        for row in dataset:
            if isinstance(row.tag, str):
                _append(out, _local(row), _element_content(row, depth + 1))


def _element_content(element: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise AnswerShapeError("the answer nests too deep")
    children = [child for child in element if isinstance(child.tag, str)]
    if not children:
        if element.get(XSI_NIL) in ("true", "1"):
            return None
        return element.text or ""
    out: dict[str, Any] = {}
    _merge_elements(out, children, depth)
    return out


def element_json(element: Any) -> Any:
    """One untyped element's content as JSON (the rules of ``answer_json``)."""
    return _element_content(element, 0)


def normalise_rows(data: dict[str, Any], path: tuple[str, ...]) -> None:
    """Make ``path`` an array of row objects in ``data`` (in place); a list met on the way
    applies the rest of the path to each of its items."""
    head, rest = path[0], path[1:]
    if not rest:
        value = data.get(head)
        if value is None or value == "":
            rows: list[Any] = []
        elif isinstance(value, list):
            rows = [row for row in value if row is not None and row != ""]
        else:
            rows = [value]
        if any(not isinstance(row, dict) for row in rows):
            raise AnswerShapeError("a declared row is not an object")
        data[head] = rows
        return
    child = data.get(head)
    if child is None or child == "":
        child = data[head] = {}
    targets = child if isinstance(child, list) else [child]
    for target in targets:
        if not isinstance(target, dict):
            raise AnswerShapeError("a declared row path runs through a value")
        normalise_rows(target, rest)


def flat_elements(xsd_type: Any) -> list[tuple[str, Any]] | None:
    """The fields of ``xsd_type`` as (name, element) when it is a complex type made of one plain
    sequence of elements, each once (no attributes, no choice, no nested group); None for any
    other. The shape both per-operation plans (``FlatAnswer``, ``soap.FlatRequest``) take."""
    if not isinstance(xsd_type, ComplexType) or xsd_type.attributes:
        return None
    nested = xsd_type.elements_nested
    if len(nested) != 1 or type(nested[0][1]) is not XsdSequence:
        return None
    sequence = nested[0][1]
    if sequence.min_occurs != 1 or sequence.max_occurs != 1:
        return None
    elements = xsd_type.elements
    if not elements or len(elements) != len(sequence):
        return None
    fields: list[tuple[str, Any]] = []
    for (name, element), item in zip(elements, sequence, strict=True):
        if element is not item or not isinstance(element, Element) or element.max_occurs != 1:
            return None
        fields.append((str(name), element))
    return fields


class FlatAnswer:
    """The answer of a document/literal operation whose response element is a plain sequence
    of simple-typed fields (each once, no attributes, no ``xs:any``), read with lxml alone.

    ``read`` gives what ``response_content`` gives for zeep's result of the same envelope (the
    field values through the same xsd types), or None for anything it does not take: a Fault,
    a SOAP Header, a DOCTYPE, a field missing, repeated, out of order, with attributes or
    children, a value its type refuses, or XML that does not parse. The caller then hands the
    answer to zeep, which reads it, or refuses it, as it always has. ``of`` builds the reader
    once per operation, or None when the operation's answer is not of this shape.

    Its parser is reused by every call: use it from one thread (the event loop's).
    """

    __slots__ = ("_body", "_envelope", "_fields", "_parser", "_response")

    def __init__(self, envelope_ns: str, response: str, fields: Sequence[tuple[str, str, Any]]):
        self._envelope = f"{{{envelope_ns}}}Envelope"
        self._body = f"{{{envelope_ns}}}Body"
        self._response = response
        self._fields = tuple(fields)
        # The settings of zeep's own parser for answers (zeep.loader.parse_xml, strict).
        self._parser = etree.XMLParser(
            remove_comments=True, resolve_entities=False, recover=False, huge_tree=False
        )

    @classmethod
    def of(cls, operation: Any) -> FlatAnswer | None:
        output = getattr(operation, "output", None)
        if not isinstance(output, DocumentMessage) or output._is_body_wrapped:
            return None
        header, body = output.header, output.body
        if body is None or header is None or header.type._element:
            return None  # header parts change the shape zeep hands over
        plain = flat_elements(body.type)
        if plain is None:
            return None
        fields: list[tuple[str, str, Any]] = []
        for name, element in plain:
            kind = element.type
            if (
                name.startswith("_")
                or not isinstance(kind, AnySimpleType)
                or type(kind).parse_xmlelement is not AnySimpleType.parse_xmlelement
            ):
                return None
            fields.append((element.qname.text, name, kind))
        return cls(output.nsmap["soap-env"], body.qname.text, fields)

    def read(self, content: bytes) -> dict[str, Any] | None:
        try:
            root = etree.fromstring(content, self._parser)
        except (etree.LxmlError, ValueError):
            return None
        if root.tag != self._envelope or len(root) != 1 or root.getroottree().docinfo.doctype:
            return None
        body = root[0]
        if body.tag != self._body or len(body) != 1:
            return None
        response = body[0]
        if response.tag != self._response or response.attrib or len(response) != len(self._fields):
            return None
        out: dict[str, Any] = {}
        for child, (tag, name, kind) in zip(response, self._fields, strict=True):
            if child.tag != tag or child.attrib or len(child):
                return None
            text = child.text
            if text is None:
                out[name] = None  # as zeep: an empty simple element is None
                continue
            try:
                out[name] = kind.pythonvalue(text)
            except Exception:  # whatever the type refuses, zeep's path decides
                return None
        return out
