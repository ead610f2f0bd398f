"""The flat-record reading of SOAP answers (``FlatAnswer``) gives what zeep's generic reading
gives, for every answer it takes, and hands every other answer back to zeep; the flat-record
envelope (``FlatRequest``) is byte for byte zeep's, and any other payload is left to zeep.

Equivalence is checked on the operations of the real WSDLs this project ships and tests
against, with generated field values (valid and invalid for their xsd types); the adapter is
checked end to end on a loopback back-end that answers with scripted envelopes.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator
from html import escape
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree  # type: ignore[import-untyped]
from zeep.wsdl.bindings.soap import SoapBinding
from zeep.wsdl.utils import etree_to_string
from zeep.wsse.username import UsernameToken

from adapters.soap import FlatRequest, build_soap_adapter, context_header
from adapters.soap_answers import FlatAnswer, answer_json, content_json
from adapters.soap_contract import load_wsdl, output_body_type, soap_bindings
from gateway.adapter import BackendBadResponse, BackendFault
from tests.adapters.loopback_backends import (
    CONTEXT,
    DEGREE,
    DEGREE_NS,
    PAYLOADS,
    WSDL_DIR,
    make_call,
    make_spec,
)

ROOT = Path(__file__).resolve().parents[2]
WSDLS = (
    ROOT / "bench" / "wsdl" / "echo.wsdl",
    WSDL_DIR / "degree.wsdl",
    WSDL_DIR / "real-estate-asmx.wsdl",
    *sorted((ROOT / "config" / "wsdl").glob("*.wsdl")),
)


def operations() -> list[tuple[str, Any]]:
    found = []
    for wsdl in WSDLS:
        for binding_name, binding in soap_bindings(load_wsdl(wsdl).wsdl).items():
            for name, operation in binding.all().items():
                found.append((f"{wsdl.name}:{binding_name.rsplit('}', 1)[-1]}:{name}", operation))
    return found


OPERATIONS = operations()
FLAT = [(label, op) for label, op in OPERATIONS if FlatAnswer.of(op) is not None]
NOT_FLAT = [label for label, op in OPERATIONS if FlatAnswer.of(op) is None]


def envelope(operation: Any, inner: str, header: str = "") -> bytes:
    ns = operation.output.nsmap["soap-env"]
    response = operation.output.body.qname
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{ns}">{header}'
        f'<soap:Body><r:{response.localname} xmlns:r="{response.namespace}">{inner}'
        f"</r:{response.localname}></soap:Body></soap:Envelope>"
    ).encode()


def fields_xml(operation: Any, texts: list[str | None]) -> str:
    out = []
    for (_name, element), text in zip(operation.output.body.type.elements, texts, strict=False):
        tag = element.qname
        prefix = f'f:{tag.localname} xmlns:f="{tag.namespace}"' if tag.namespace else tag.localname
        close = f"f:{tag.localname}" if tag.namespace else tag.localname
        out.append(f"<{prefix}/>" if text is None else f"<{prefix}>{escape(text)}</{close}>")
    return "".join(out)


def generic(operation: Any, body: bytes) -> Any:
    """What the adapter made of an answer before: zeep's reading, then ``answer_json``."""
    result = operation.process_reply(etree.fromstring(body))
    return answer_json(result, output_body_type(operation))


def test_the_real_contracts_have_flat_and_other_operations() -> None:
    """The shapes the reader takes are the common ones (a verify answer, an ASMX scalar
    result, a ticket string); DataSets and repeated records are left to zeep."""
    labels = [label for label, _ in FLAT]
    assert "degree.wsdl:DegreeBinding:VerifyDegree" in labels
    assert "echo.wsdl:EchoBinding:Echo" in labels
    assert "real-estate-asmx.wsdl:RealEstateServiceSoap12:CheckCertificate" in labels
    assert "real-estate-asmx.wsdl:RealEstateServiceSoap:QueryRegistrations" in NOT_FLAT
    assert "social-insurance.wsdl:SocialInsuranceBinding:GetContributionHistory" in NOT_FLAT


TEXTS = st.one_of(
    st.none(),
    st.sampled_from(
        ["true", "false", "1", "0", " 7 ", "-3", "12.50", "1e400", "NaN", "2020-07-01",
         "2020-07-01T08:00:00+08:00", "P1DT2H", "ab==", "0a1b", "", "  ", "工学学士", "<&>"]
    ),
    st.text(max_size=12),
)  # fmt: skip


@pytest.mark.parametrize(("label", "operation"), FLAT, ids=[label for label, _ in FLAT])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_flat_reading_equals_zeeps(label: str, operation: Any, data: st.DataObject) -> None:
    count = len(operation.output.body.type.elements)
    texts = data.draw(st.lists(TEXTS, min_size=count, max_size=count))
    texts = [
        None if text is None else "".join(c for c in text if c.isprintable()) for text in texts
    ]
    body = envelope(operation, fields_xml(operation, texts))
    read = FlatAnswer.of(operation).read(body)  # type: ignore[union-attr]
    if read is not None:
        assert content_json(read) == generic(operation, body)


@pytest.mark.parametrize(("label", "operation"), FLAT, ids=[label for label, _ in FLAT])
def test_a_plain_answer_is_taken(label: str, operation: Any) -> None:
    count = len(operation.output.body.type.elements)
    body = envelope(operation, fields_xml(operation, [None] * count))
    read = FlatAnswer.of(operation).read(body)  # type: ignore[union-attr]
    assert read is not None
    assert content_json(read) == generic(operation, body)


DEGREE_OP = dict(OPERATIONS)["degree.wsdl:DegreeBinding:VerifyDegree"]
DEGREE_FIELDS = fields_xml(DEGREE_OP, ["true", "工学学士", "西北大学", "2020-07-01", "12.50"])
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def test_degree_answer_read_flat() -> None:
    body = envelope(DEGREE_OP, DEGREE_FIELDS)
    assert content_json(FlatAnswer.of(DEGREE_OP).read(body)) == DEGREE  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(envelope(DEGREE_OP, DEGREE_FIELDS, "<soap:Header/>"), id="header"),
        pytest.param(
            envelope(DEGREE_OP, DEGREE_FIELDS[: DEGREE_FIELDS.rindex("<f:")]), id="missing"
        ),
        pytest.param(envelope(DEGREE_OP, DEGREE_FIELDS + "<x>1</x>"), id="extra"),
        pytest.param(
            envelope(DEGREE_OP, fields_xml(DEGREE_OP, ["true", "a", "b", "not-a-date", "1"])),
            id="value-its-type-refuses",
        ),
        pytest.param(
            envelope(
                DEGREE_OP,
                DEGREE_FIELDS.replace("<f:valid ", f'<f:valid xmlns:i="{XSI}" i:nil="true" ', 1),
            ),
            id="attribute",
        ),
        pytest.param(
            envelope(DEGREE_OP, DEGREE_FIELDS.replace("工学学士", "<b>工学</b>")), id="child"
        ),
        pytest.param(
            f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><soap:Fault><faultcode>soap:Client'
            "</faultcode><faultstring>no</faultstring></soap:Fault></soap:Body></soap:Envelope>".encode(),
            id="fault",
        ),
        pytest.param(
            b'<!DOCTYPE x [<!ENTITY e "x">]>' + envelope(DEGREE_OP, DEGREE_FIELDS)[38:], id="dtd"
        ),
        pytest.param(envelope(DEGREE_OP, DEGREE_FIELDS)[:-10], id="truncated"),
        pytest.param(
            envelope(DEGREE_OP, DEGREE_FIELDS).replace(SOAP11.encode(), b"urn:x"), id="not-soap"
        ),
    ],
)
def test_other_answers_are_left_to_zeep(body: bytes) -> None:
    assert FlatAnswer.of(DEGREE_OP).read(body) is None  # type: ignore[union-attr]


# --- the adapter, end to end ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def answering(status: int, body: bytes) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, content_type="text/xml", charset="utf-8")

    app = web.Application()
    app.router.add_post("/ws", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/ws"
    finally:
        await runner.cleanup()


@pytest.fixture
def zeep_readings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the answers the adapter handed to zeep's generic reading."""
    seen: list[int] = []
    original = SoapBinding.process_reply

    def counted(self: Any, client: Any, operation: Any, response: Any) -> Any:
        seen.append(response.status_code)
        return original(self, client, operation, response)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(SoapBinding, "process_reply", counted)
    return seen


async def call_with_answer(status: int, body: bytes) -> Any:
    async with answering(status, body) as address:
        adapter = await build_soap_adapter.open(make_spec("soap", address))
        try:
            return await adapter.call(make_call("soap"))
        finally:
            await adapter.aclose()


async def test_adapter_reads_a_flat_answer_without_zeep(zeep_readings: list[int]) -> None:
    reply = await call_with_answer(200, envelope(DEGREE_OP, DEGREE_FIELDS))
    assert reply.data == DEGREE
    assert zeep_readings == []


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(fields_xml(DEGREE_OP, ["true", "a", "b", "not-a-date", "1"]), id="bad-date"),
        pytest.param(
            DEGREE_FIELDS.replace("<f:valid ", f'<f:valid xmlns:i="{XSI}" i:nil="true" ', 1),
            id="nil-attribute",
        ),
    ],
)
async def test_adapter_hands_other_answers_to_zeep(zeep_readings: list[int], inner: str) -> None:
    body = envelope(DEGREE_OP, inner)
    reply = await call_with_answer(200, body)
    assert zeep_readings == [200]
    assert reply.data == generic(DEGREE_OP, body)


async def test_adapter_header_answer_to_zeep(zeep_readings: list[int]) -> None:
    body = envelope(
        DEGREE_OP, DEGREE_FIELDS, f'<soap:Header><h:x xmlns:h="{DEGREE_NS}"/></soap:Header>'
    )
    reply = await call_with_answer(200, body)
    assert zeep_readings == [200]
    assert reply.data == DEGREE


async def test_adapter_fault_in_a_200_is_still_a_fault(zeep_readings: list[int]) -> None:
    body = (
        f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><soap:Fault><faultcode>soap:Client'
        "</faultcode><faultstring>张三</faultstring></soap:Fault></soap:Body></soap:Envelope>"
    ).encode()
    with pytest.raises(BackendFault) as caught:
        await call_with_answer(200, body)
    assert caught.value.fault_side == "client"
    assert "张三" not in str(caught.value)


async def test_adapter_bad_xml_is_still_unreadable(zeep_readings: list[int]) -> None:
    with pytest.raises(BackendBadResponse):
        await call_with_answer(200, envelope(DEGREE_OP, DEGREE_FIELDS)[:-10])
    assert zeep_readings == [200]


# --- the request side: FlatRequest builds zeep's bytes ------------------------------------


def request_operations() -> list[tuple[str, Any, Any, Any]]:
    found = []
    for wsdl in WSDLS:
        client = load_wsdl(wsdl)
        for binding_name, binding in soap_bindings(client.wsdl).items():
            for name, operation in binding.all().items():
                label = f"{wsdl.name}:{binding_name.rsplit('}', 1)[-1]}:{name}"
                found.append((label, client, binding, operation))
    return found


FLAT_REQUESTS = [
    (label, client, binding, operation)
    for label, client, binding, operation in request_operations()
    if FlatRequest.of(client, binding, operation) is not None
]


def zeeps_envelope(client: Any, binding: Any, operation: Any, payload: dict[str, Any]) -> Any:
    """What the adapter sent before: zeep's envelope and HTTP headers for the payload."""
    kwargs = {**payload, "_soapheaders": [context_header(CONTEXT)]}
    envelope, headers = binding._create(
        operation.name, (), kwargs, client=client, options={"address": "http://x/"}
    )
    return etree_to_string(envelope), headers  # type: ignore[no-untyped-call]


def test_the_real_contracts_have_flat_requests() -> None:
    labels = [label for label, *_ in FLAT_REQUESTS]
    assert "degree.wsdl:DegreeBinding:VerifyDegree" in labels
    assert "echo.wsdl:EchoBinding:Echo" in labels
    assert "real-estate-asmx.wsdl:RealEstateServiceSoap12:CheckCertificate" in labels


@pytest.mark.parametrize(
    ("label", "client", "binding", "operation"),
    FLAT_REQUESTS,
    ids=[label for label, *_ in FLAT_REQUESTS],
)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_flat_request_bytes_equal_zeeps(
    label: str, client: Any, binding: Any, operation: Any, data: st.DataObject
) -> None:
    names = [name for name, _ in operation.input.body.type.elements]
    values = data.draw(st.lists(st.text(max_size=16), min_size=len(names), max_size=len(names)))
    payload = dict(zip(names, values, strict=True))
    plan = FlatRequest.of(client, binding, operation)
    assert plan is not None
    try:
        expected: Any = zeeps_envelope(client, binding, operation, payload)
    except ValueError:
        expected = None  # a character XML cannot carry: zeep refuses it
    built = plan.envelope(payload, context_header(CONTEXT))
    if expected is None:
        assert built is None
    else:
        assert built is not None
        assert (etree_to_string(built[0]), built[1]) == expected  # type: ignore[no-untyped-call]


ECHO = next(row for row in FLAT_REQUESTS if row[0] == "echo.wsdl:EchoBinding:Echo")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({}, id="missing"),
        pytest.param({"zjhm": "1", "other": "2"}, id="added"),
        pytest.param({"zjhm": 12}, id="a-number"),
        pytest.param({"zjhm": None}, id="none"),
        pytest.param({"zjhm": "a\x00b"}, id="not-xml-text"),
    ],
)
def test_other_payloads_are_left_to_zeep(payload: dict[str, Any]) -> None:
    _label, client, binding, operation = ECHO
    plan = FlatRequest.of(client, binding, operation)
    assert plan is not None
    assert plan.envelope(payload, context_header(CONTEXT)) is None


def test_a_client_with_ws_security_keeps_zeeps_serialiser() -> None:
    _label, client, binding, operation = ECHO
    with_wsse = copy.copy(client)
    with_wsse.wsse = UsernameToken("u", "p")  # type: ignore[no-untyped-call]
    assert FlatRequest.of(with_wsse, binding, operation) is None


async def test_adapter_sends_zeeps_bytes() -> None:
    """The degree call's envelope on the wire is byte for byte the one zeep builds."""
    seen: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.read())
        body = envelope(DEGREE_OP, DEGREE_FIELDS)
        return web.Response(body=body, content_type="text/xml", charset="utf-8")

    app = web.Application()
    app.router.add_post("/ws", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        address = f"http://127.0.0.1:{runner.addresses[0][1]}/ws"
        adapter = await build_soap_adapter.open(make_spec("soap", address))
        try:
            await adapter.call(make_call("soap"))
        finally:
            await adapter.aclose()
    finally:
        await runner.cleanup()
    client = load_wsdl(WSDL_DIR / "degree.wsdl")
    (binding,) = soap_bindings(client.wsdl).values()
    expected, _ = zeeps_envelope(client, binding, binding.get("VerifyDegree"), PAYLOADS["soap"])
    assert seen == [expected]


async def test_a_decimal_its_type_refuses_is_an_unreadable_answer(zeep_readings: list[int]) -> None:
    """zeep's xs:decimal raises an ArithmeticError, not a ValueError, on such a value: still an
    answer that could not be read, never an unmapped exception."""
    body = envelope(DEGREE_OP, fields_xml(DEGREE_OP, ["true", "a", "b", "2020-07-01", "abc"]))
    with pytest.raises(BackendBadResponse):
        await call_with_answer(200, body)
    assert zeep_readings == [200]
