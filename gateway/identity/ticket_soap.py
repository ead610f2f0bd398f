"""SOAP 1.1 envelopes of the signed-ticket service (config/wsdl/identity-ticket.wsdl), by hand.

Parsing is hardened (no entities, no network, no DTD, bounded size); answers carry a JSON string
in ``return``, as the provincial platforms do. Used by the gateway's ticket face and by the demo
platforms; the gateway as a client uses zeep with the same WSDL. The demo platforms that name
their services and elements their own way (docs/identity-platforms.md) pass their namespaces and
operations in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from lxml import etree  # type: ignore[import-untyped]

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
TICKET_NS = "urn:tongban:identity:ticket"
OPERATIONS = ("ticketValidation", "getUserInfo", "generateST")
_FIELDS = ("app", "time", "sign", "arg", "datatype", "attrs", "proxyapp")
_SIGNATURE_FIELDS = ("app", "time", "sign")
MAX_ENVELOPE = 64 * 1024


class SoapRequestError(ValueError):
    """Not a call this service understands; the message is safe to answer with."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse_call(
    body: bytes,
    *,
    namespaces: Collection[str] = (TICKET_NS,),
    operations: Collection[str] = OPERATIONS,
    fields: Collection[str] | None = _FIELDS,
) -> tuple[str, dict[str, str]]:
    """(operation, its fields) of a SOAP request to one of ``operations`` in one of
    ``namespaces``; ``fields``: the elements read (None: every child)."""
    if len(body) > MAX_ENVELOPE:
        raise SoapRequestError("envelope too large")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError:
        raise SoapRequestError("not XML") from None
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        raise SoapRequestError("not a SOAP 1.1 envelope")
    payload = root.find(f"{{{SOAP_NS}}}Body")
    children = list(payload) if payload is not None else []
    if len(children) != 1:
        raise SoapRequestError("the body must hold one operation")
    element = children[0]
    name = etree.QName(element).localname
    if etree.QName(element).namespace not in namespaces or name not in operations:
        raise SoapRequestError("unknown operation")
    found: dict[str, str] = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue
        local = etree.QName(child).localname
        if fields is None or local in fields:
            found[local] = (child.text or "").strip()
    return name, found


def header_signed_fields(operation: str, fields: Mapping[str, str]) -> dict[str, str]:
    """What an HMAC-SHA256 header signature covers over SOAP: the operation and its arguments
    (not the app / time / sign elements, which the headers replace). Both sides use this."""
    signed = {k: v for k, v in fields.items() if k not in _SIGNATURE_FIELDS and v}
    return {"operation": operation, **signed}


def answer(operation: str, json_text: str, namespace: str = TICKET_NS) -> bytes:
    envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS, "t": namespace})
    body = etree.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    response = etree.SubElement(body, f"{{{namespace}}}{operation}Response")
    etree.SubElement(response, f"{{{namespace}}}return").text = json_text
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"))


def fault(code: str, message: str) -> bytes:
    envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
    body = etree.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    element = etree.SubElement(body, f"{{{SOAP_NS}}}Fault")
    etree.SubElement(element, "faultcode").text = f"soap:{code}"
    etree.SubElement(element, "faultstring").text = message
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"))
