"""A SOAP system's configuration checked against its vendored WSDL, before anything runs.

``load_wsdl`` parses a WSDL with zeep (local files only, no DTD, no external entities) and keeps
it for the file's current version, so ``tongban config check`` and start-up parse each file
once. ``pick_binding`` chooses the SOAP binding (a .NET ASMX service publishes a SOAP 1.1 and a
SOAP 1.2 binding of one port type: one must be named). ``operation_contract`` describes an
operation's request fields and answer as ``Shape``s, the answer as ``soap_answers`` presents it
(the response element's content, ``xs:any`` open, declared rows as arrays), so that route
mappings can be checked against the WSDL by the gateway.

Must not: load anything over the network; import the gateway beyond its adapter contract.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import zeep
import zeep.exceptions
from lxml import etree  # type: ignore[import-untyped]
from zeep.transports import Transport
from zeep.wsdl.bindings.soap import SoapBinding
from zeep.xsd.elements.any import Any as AnyElement
from zeep.xsd.elements.builtins import Schema as SchemaElement
from zeep.xsd.elements.element import Element
from zeep.xsd.elements.indicators import Indicator

from gateway.adapter import AdapterConfigError, OperationContract, Shape, suggestion

__all__ = [
    "LocalTransport",
    "WsdlError",
    "element_fields",
    "header_element",
    "load_wsdl",
    "operation_contract",
    "output_body_type",
    "pick_binding",
    "row_shape_problems",
]

_MAX_DEPTH = 24
"""Type nesting followed when describing a message (recursive types stop here, left open)."""


class WsdlError(Exception):
    """A WSDL that cannot be used; the message is safe to show (no document content)."""


class LocalTransport(Transport):
    """zeep's transport for reading contracts: vendored files only, never the network."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def _load_remote_data(self, url: str) -> NoReturn:
        raise zeep.exceptions.TransportError(  # type: ignore[no-untyped-call]
            f"the WSDL imports {url}: vendor it and refer to the local file"
        )


def load_wsdl(path: Path) -> Any:
    """The parsed WSDL of ``path`` (a ``zeep.Client``), shared while the file is unchanged."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise WsdlError(f"file {path.name} cannot be read ({exc.strerror})") from None
    return _load(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _load(path: str, _mtime: int, _size: int) -> Any:
    settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_external=True)
    try:
        return zeep.Client(  # type: ignore[no-untyped-call]
            path, transport=LocalTransport(), settings=settings
        )
    except etree.XMLSyntaxError as exc:
        line = f" at line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise WsdlError(f"{Path(path).name} is not well-formed XML{line}") from None
    except (zeep.exceptions.Error, OSError, ValueError, KeyError, AttributeError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise WsdlError(f"{Path(path).name} cannot be loaded: {detail}") from None


def soap_bindings(document: Any) -> dict[str, Any]:
    return {
        str(name): binding
        for name, binding in document.bindings.items()
        if isinstance(binding, SoapBinding)
    }


def pick_binding(document: Any, wanted: str | None) -> Any:
    """The binding named ``wanted``, or the only SOAP binding of the WSDL ``document``;
    ``AdapterConfigError`` otherwise."""
    found = soap_bindings(document)
    if wanted is not None:
        if wanted not in found:
            local = wanted.rsplit("}", 1)[-1]
            close = [name for name in found if name.rsplit("}", 1)[-1] == local]
            hint = f"; did you mean `{close[0]}`?" if close else suggestion(wanted, found)
            raise AdapterConfigError(
                "options.binding", f"the WSDL has no SOAP binding {wanted}{hint}"
            )
        return found[wanted]
    if len(found) != 1:
        names = ", ".join(sorted(found)) or "none"
        raise AdapterConfigError(
            "options.binding",
            f"the WSDL has {len(found)} SOAP bindings ({names}): name one as options.binding",
        )
    return next(iter(found.values()))


def output_body_type(operation: Any) -> Any:
    """The xsd type of an operation's response element (None for a one-way operation)."""
    body = getattr(getattr(operation, "output", None), "body", None)
    return getattr(body, "type", None)


def _repeated(item: Any) -> bool:
    occurs = getattr(item, "max_occurs", 1)
    return occurs == "unbounded" or (isinstance(occurs, int) and occurs > 1)


def _fields(xsd_type: Any, depth: int) -> Shape:
    """An object's fields as ``soap_answers`` shows them: choice members and xs:any content
    merged in, inline schemas left out, simple content as ``value``."""
    if depth > _MAX_DEPTH:
        return Shape(fields={}, open=True)
    fields: dict[str, Shape] = {}
    is_open = False
    for name, item in getattr(xsd_type, "elements_nested", []):
        if isinstance(item, SchemaElement):
            continue
        if isinstance(item, AnyElement):
            is_open = True
        elif isinstance(item, Indicator):
            repeated = _repeated(item)
            for member_name, member in item.elements:
                if isinstance(member, AnyElement):
                    is_open = True
                elif isinstance(member, Element):
                    shape = _element(member, depth + 1)
                    fields[member_name] = Shape(
                        shape.fields, shape.open, shape.repeated or repeated
                    )
        elif isinstance(item, Element):
            fields[name] = _element(item, depth + 1)
    for name, _attribute in getattr(xsd_type, "attributes", []):
        if not str(name).startswith("_"):  # anyAttribute: never in an answer
            fields.setdefault(str(name), Shape())
    if getattr(xsd_type, "_element", None) is None and _simple_content(xsd_type):
        fields["value"] = Shape()
    return Shape(fields=fields, open=is_open)


def _simple_content(xsd_type: Any) -> bool:
    return any(name == "_value_1" for name, _ in getattr(xsd_type, "elements_nested", [])) and not (
        getattr(xsd_type, "elements", None)
    )


def _element(element: Any, depth: int) -> Shape:
    xsd_type = element.type
    if getattr(xsd_type, "elements_nested", None) is not None and (
        xsd_type.elements_nested or getattr(xsd_type, "attributes", None)
    ):
        shape = _fields(xsd_type, depth)
    elif type(xsd_type).__name__ == "AnyType":
        shape = Shape(fields={}, open=True)
    else:
        shape = Shape()
    return Shape(shape.fields, shape.open, _repeated(element))


def operation_contract(operation: Any, rows: Sequence[str] = ()) -> OperationContract:
    """What the request payload and the answer of ``operation`` look like."""
    body = getattr(operation.input, "body", None)
    request = _fields(body.type, 0) if body is not None else Shape(fields={})
    answer_type = output_body_type(operation)
    answer = _fields(answer_type, 0) if answer_type is not None else Shape(fields={})
    for path in rows:
        answer = _as_rows(answer, tuple(path.split(".")))
    return OperationContract(input=request, output=answer)


def _as_rows(shape: Shape, path: tuple[str, ...]) -> Shape:
    """``shape`` with the field at ``path`` an array (open content: an open array of objects)."""
    fields = dict(shape.fields or {})
    head, rest = path[0], path[1:]
    child = fields.get(head)
    if child is None:
        child = Shape(fields={}, open=True)
    if rest:
        fields[head] = _as_rows(child, rest)
    else:
        fields[head] = Shape(child.fields if child.fields is not None else {}, child.open, True)
    return Shape(fields, shape.open, shape.repeated)


def row_shape_problems(answer: Shape, path: str) -> str | None:
    """Why the declared row ``path`` cannot be in ``answer``, or None."""
    shape = answer
    for part in path.split("."):
        if shape.fields is None:
            return f"{path!r}: {part!r} is below a value"
        if part in shape.fields:
            shape = shape.fields[part]
            continue
        if shape.open:
            return None
        return f"{path!r}: no field {part!r} in the answer{suggestion(part, shape.fields)}"
    if shape.fields is None and not shape.open:
        return f"{path!r} is a value, not rows"
    return None


def header_element(client: Any, name: str) -> Any:
    """The global element ``name`` of a loaded WSDL ('{namespace}Name', or a local name unique
    in it)."""
    if name.startswith("{"):
        try:
            return client.get_element(name)
        except (zeep.exceptions.LookupError, ValueError):
            raise WsdlError(f"no element {name} in the WSDL") from None
    found = [
        element
        for schema in client.wsdl.types.documents
        for qname, element in schema._elements.items()
        if etree.QName(qname).localname == name
    ]
    if len(found) != 1:
        raise WsdlError(
            f"{len(found)} elements named {name!r} in the WSDL: write it as '{{namespace}}{name}'"
        )
    return found[0]


def element_fields(element: Any) -> Mapping[str, Shape]:
    return _fields(element.type, 0).fields or {}
