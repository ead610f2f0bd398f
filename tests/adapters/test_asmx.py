"""The SOAP adapter against a loopback service that answers like a deployed .NET ASMX service:
a bare xs:boolean result, DataSet results (diffgram, inline schema or none), a SoapHeader
credential from a secret, and hostile answers, each becoming data or one of our errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import zeep.exceptions
from lxml import etree  # type: ignore[import-untyped]

from adapters.soap import build_soap_adapter, translate_zeep_error
from gateway.adapter import (
    Adapter,
    AdapterConfigError,
    BackendBadResponse,
    BackendFault,
    Call,
    Secret,
    SystemSpec,
)
from gateway.mapping import compile_mapping
from tests.adapters.dotnet_backend import (
    BINDING,
    NS,
    REGISTRATIONS,
    SOAP11,
    WSDL_NAME,
    DotnetService,
    Mode,
    running_dotnet_service,
)
from tests.adapters.loopback_backends import CONTEXT, WSDL_DIR

OWNER = REGISTRATIONS[0].owner_id
ROWS = "QueryRegistrationsResult.Table"


def asmx_spec(service: DotnetService, **changes: Any) -> SystemSpec:
    fields: dict[str, Any] = {
        "id": "qinghai-bdc",
        "province": "63",
        "address": service.address,
        "config_dir": WSDL_DIR,
        "wsdl": WSDL_NAME,
        "read_timeout": 2.0,
        "max_response_bytes": 256 * 1024,
        "options": {"binding": BINDING},
        "auth": {
            "type": "soap_header",
            "element": "AuthHeader",
            "fields": {"UserName": service.user, "Password": Secret(service.password)},
        },
        "operations": {
            "CheckCertificate": {},
            "QueryRegistrations": {"rows": [ROWS]},
            "GetRegistrationCount": {},
        },
    }
    return SystemSpec(**{**fields, **changes})


@contextlib.asynccontextmanager
async def asmx(mode: Mode = "ok", **changes: Any) -> AsyncIterator[tuple[DotnetService, Adapter]]:
    async with running_dotnet_service(DotnetService(mode=mode)) as service:
        adapter = await build_soap_adapter.open(asmx_spec(service, **changes))
        try:
            yield service, adapter
        finally:
            await adapter.aclose()


def call(operation: str, **payload: Any) -> Call:
    return Call(operation, payload, CONTEXT)


def query(service: DotnetService, owner: str = OWNER) -> Call:
    return call(
        "QueryRegistrations", userName=service.user, password=service.password, ownerIdNo=owner
    )


def expected_rows(owner: str) -> list[dict[str, str]]:
    return [
        {"BDCDYH": r.unit, "BDCQZH": r.certificate, "ZL": r.address, "MJ": r.area,
         "QLRZJH": r.owner_id}
        for r in REGISTRATIONS
        if r.owner_id == owner
    ]  # fmt: skip


def assert_plain_json(data: Any) -> None:
    text = orjson.dumps(data).decode()
    for leak in ("<Schema", "object at 0x", "_value_1", "<Element", "Decimal("):
        assert leak not in text


async def test_a_bare_boolean_result_is_a_named_field_and_the_header_carries_the_secret() -> None:
    certificate = REGISTRATIONS[0].certificate
    async with asmx() as (service, adapter):
        valid = await adapter.call(call("CheckCertificate", certNo=certificate, ownerIdNo=OWNER))
        invalid = await adapter.call(call("CheckCertificate", certNo="nope", ownerIdNo=OWNER))
    assert valid.data == {"CheckCertificateResult": True}
    assert invalid.data == {"CheckCertificateResult": False}
    header = etree.fromstring(service.seen[0]).find(f"{{{SOAP11}}}Header/{{{NS}}}AuthHeader")
    assert header.findtext(f"{{{NS}}}Password") == service.password
    assert service.actions[0] == f"{NS}CheckCertificate"
    # The route maps the named result into the canonical answer.
    assert compile_mapping({"valid": "CheckCertificateResult"}).apply(valid.data) == {"valid": True}


async def test_a_wrong_header_credential_is_the_services_fault() -> None:
    async with running_dotnet_service(DotnetService()) as service:
        spec = asmx_spec(
            service,
            auth={
                "type": "soap_header",
                "element": f"{{{NS}}}AuthHeader",
                "fields": {"UserName": service.user, "Password": Secret("wrong-password")},
            },
        )
        adapter = await build_soap_adapter.open(spec)
        try:
            with pytest.raises(BackendFault) as fault:
                await adapter.call(call("CheckCertificate", certNo="x", ownerIdNo=OWNER))
        finally:
            await adapter.aclose()
    assert fault.value.fault_side == "server"
    assert "身份验证" not in fault.value.detail  # the fault string stays out of our answer


@pytest.mark.parametrize("mode", ["ok", "no_schema"])
async def test_a_dataset_becomes_an_array_of_row_objects(mode: Mode) -> None:
    async with asmx(mode) as (service, adapter):
        reply = await adapter.call(query(service))
    # Typed through the inline schema (MJ is xs:decimal) or not: the same strings.
    assert reply.data == {"QueryRegistrationsResult": {"Table": expected_rows(OWNER)}}
    assert_plain_json(reply.data)


@pytest.mark.parametrize("owner", [REGISTRATIONS[2].owner_id, "000000000000000000"])
async def test_one_row_and_no_row_are_arrays_too(owner: str) -> None:
    async with asmx() as (service, adapter):
        reply = await adapter.call(query(service, owner))
    assert reply.data == {"QueryRegistrationsResult": {"Table": expected_rows(owner)}}
    assert len(reply.data["QueryRegistrationsResult"]["Table"]) == (1 if owner[0] == "6" else 0)


async def test_without_declared_rows_an_empty_dataset_has_no_table_at_all() -> None:
    async with asmx(operations={"QueryRegistrations": {}}) as (service, adapter):
        reply = await adapter.call(query(service, "000000000000000000"))
    # Why rows are declared: an empty DataSet writes no table, and XML alone cannot tell one
    # repeated element from a single object.
    assert reply.data == {"QueryRegistrationsResult": {}}


async def test_an_integer_result_is_a_named_number() -> None:
    async with asmx() as (_service, adapter):
        reply = await adapter.call(call("GetRegistrationCount", ownerIdNo=OWNER))
    assert reply.data == {"GetRegistrationCountResult": 2}


async def test_rows_map_to_canonical_names_with_each() -> None:
    mapping = compile_mapping(
        {
            "registrations": {
                "from": ROWS,
                "default": [],
                "each": {
                    "unit_number": "BDCDYH",
                    "certificate_number": "BDCQZH",
                    "address": "ZL",
                    "area_m2": {"from": "MJ", "as": "number"},
                },
            }
        }
    )
    async with asmx() as (service, adapter):
        reply = await adapter.call(query(service))
    assert mapping.apply(reply.data) == {
        "registrations": [
            {"unit_number": r.unit, "certificate_number": r.certificate, "address": r.address,
             "area_m2": float(r.area)}
            for r in REGISTRATIONS[:2]
        ]
    }  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "operation"),
    [
        ("deep", "QueryRegistrations"),
        ("undeclared_column", "QueryRegistrations"),
        ("wrong_element", "CheckCertificate"),
        ("empty_body", "CheckCertificate"),
        ("doctype", "CheckCertificate"),
        ("entities", "CheckCertificate"),
    ],
)
async def test_hostile_answers_are_bad_responses(mode: Mode, operation: str) -> None:
    async with asmx(mode) as (service, adapter):
        request = (
            query(service)
            if operation == "QueryRegistrations"
            else call("CheckCertificate", certNo="x", ownerIdNo=OWNER)
        )
        with pytest.raises(BackendBadResponse) as error:
            await adapter.call(request)
    assert error.value.reached_backend


def test_the_contract_names_every_problem_with_the_name_meant() -> None:
    spec = SystemSpec(
        id="qinghai-bdc",
        province="63",
        address="http://127.0.0.1:1/ws",
        config_dir=WSDL_DIR,
        wsdl=WSDL_NAME,
        options={},
        auth={"type": "soap_header", "element": "AuthHeadr", "fields": {"UserNam": "u"}},
        operations={"CheckCertificat": {}, "QueryRegistrations": {"rows": "Table"}},
    )
    with pytest.raises(AdapterConfigError) as unnamed:
        build_soap_adapter.contract(spec)
    # Two SOAP bindings (1.1 and 1.2): without a name nothing else can be checked.
    assert [(e.field, e.message) for e in unnamed.value.all()] == [
        (
            "options.binding",
            "the WSDL has 2 SOAP bindings ({http://bdc.qh.example/ws/}RealEstateServiceSoap, "
            "{http://bdc.qh.example/ws/}RealEstateServiceSoap12): name one as options.binding",
        )
    ]
    with pytest.raises(AdapterConfigError) as named:
        build_soap_adapter.contract(dataclasses.replace(spec, options={"binding": BINDING}))
    assert [(e.field, e.message) for e in named.value.all()] == [
        (
            "operations.CheckCertificat",
            "not an operation of binding {http://bdc.qh.example/ws/}RealEstateServiceSoap;"
            " did you mean `CheckCertificate`?",
        ),
        (
            "operations.QueryRegistrations.rows",
            "'Table': no field 'Table' in the answer; known: QueryRegistrationsResult",
        ),
        (
            "auth.element",
            "0 elements named 'AuthHeadr' in the WSDL: write it as '{namespace}AuthHeadr'",
        ),
    ]


def test_the_contract_describes_requests_and_answers() -> None:
    contract = build_soap_adapter.contract(
        SystemSpec(
            id="qinghai-bdc",
            province="63",
            address="http://127.0.0.1:1/ws",
            config_dir=WSDL_DIR,
            wsdl=WSDL_NAME,
            options={"binding": BINDING},
            operations={"CheckCertificate": {}, "QueryRegistrations": {"rows": ROWS}},
        )
    )
    check = contract.operations["CheckCertificate"]
    assert set(check.input.fields or {}) == {"certNo", "ownerIdNo"}
    assert set(check.output.fields or {}) == {"CheckCertificateResult"}
    answer = contract.operations["QueryRegistrations"].output.fields or {}
    rows = answer["QueryRegistrationsResult"]
    assert rows.open
    assert rows.fields is not None
    assert rows.fields["Table"].repeated


@pytest.mark.parametrize(
    "refusal",
    [
        zeep.exceptions.DTDForbidden("<!DOCTYPE x>", None, None),  # type: ignore[no-untyped-call]
        zeep.exceptions.EntitiesForbidden("lol", "&lol;"),  # type: ignore[no-untyped-call]
    ],
)
def test_xml_refused_by_the_parser_is_a_bad_response(refusal: Exception) -> None:
    error = translate_zeep_error(refusal, "qinghai-bdc")
    assert isinstance(error, BackendBadResponse)
    assert error.reached_backend
