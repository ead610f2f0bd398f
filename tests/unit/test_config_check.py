"""What `tongban config check` finds: every problem of every file in one run, each with the
file, entry, field and (in a JSON Schema) the pointer, the key meant for an unknown one, and
the configuration checked against each WSDL: bindings, operations, message parts, mappings."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.mapping import compile_mapping
from gateway.settings import ConfigError, load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config"
ASMX_WSDL = Path(__file__).resolve().parents[1] / "adapters" / "wsdl" / "real-estate-asmx.wsdl"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(CONFIG, target)
    shutil.copy(ASMX_WSDL, target / "wsdl" / ASMX_WSDL.name)
    return target


def edit(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def problems_of(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(config, resolve_secrets=False)
    return info.value.problems


def add_asmx_system(config: Path, **changes: Any) -> None:
    system = {
        "name": {"zh": "青海省不动产登记查询系统", "en": "Qinghai real-estate registration"},
        "province": "63",
        "protocol": "soap",
        "wsdl": "wsdl/real-estate-asmx.wsdl",
        "address": "http://127.0.0.1:18099/ws/RealEstateService.asmx",
        "options": {"binding": "{http://bdc.qh.example/ws/}RealEstateServiceSoap"},
        "operations": {
            "CheckCertificate": {},
            "QueryRegistrations": {"rows": "QueryRegistrationsResult.Table"},
        },
        **changes,
    }
    edit(config / "systems.yaml", lambda d: d["systems"].update({"qinghai-bdc": system}))


def add_route(config: Path, **route: Any) -> None:
    base = {
        "service": "degree-verification",
        "operation": "verify",
        "receiving": ["61"],
        "handling": "63",
        "system": "qinghai-bdc",
    }
    edit(config / "routes.yaml", lambda d: d["routes"].append({**base, **route}))


def test_every_problem_of_every_file_in_one_run(config: Path) -> None:
    edit(config / "systems.yaml", lambda d: d["systems"]["shaanxi-si"]["timeouts"].update(conect=1))
    edit(
        config / "services" / "pension-transfer.yaml",
        lambda d: d["operations"]["transfer-application"].update(retry="always"),
    )
    edit(config / "routes.yaml", lambda d: d["routes"][1].update(system_operation="Submit"))
    edit(config / "idps.yaml", lambda d: d["idps"]["gansu"].update(parms={}))
    edit(config / "clients.yaml", lambda d: d["clients"]["demo-portal-qinghai"].update(scope=[]))
    problems = problems_of(config)
    assert problems == [
        "systems.yaml: system 'shaanxi-si': timeouts.conect: unknown key; did you mean `connect`?",
        "services/pension-transfer.yaml: service 'pension-transfer':"
        " operations.transfer-application.retry: Input should be 'safe', 'idempotent-with-key'"
        " or 'never'",
        # The broken service does not hide its route's own problem.
        "routes.yaml: route #2 (pension-transfer/transfer-application → 63): system_operation:"
        " 'qinghai-si' has no operation 'Submit'; did you mean `SubmitTransfer`?",
        "clients.yaml: client 'demo-portal-qinghai': scope: unknown key; did you mean `scopes`?",
        "idps.yaml: idp 'gansu': parms: unknown key; did you mean `params`?",
    ]


def test_every_json_schema_problem_has_its_pointer(config: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "strin"}, "id": {"minLenght": 18, "maxLength": "18"}},
        "requried": ["name"],
    }
    edit(
        config / "services" / "degree-verification.yaml",
        lambda d: d["operations"]["verify"].update(input_schema=schema),
    )
    where = (
        "services/degree-verification.yaml: service 'degree-verification':"
        " operations.verify.input_schema: not a valid JSON Schema at"
    )
    assert problems_of(config) == [
        f"{where} /properties/id/maxLength: must be of type integer",
        f"{where} /properties/id/minLenght: not a JSON Schema keyword; did you mean `minLength`?",
        f"{where} /properties/name/type: 'strin' is not a JSON Schema type; did you mean `string`?",
        f"{where} /requried: not a JSON Schema keyword; did you mean `required`?",
    ]


def test_unknown_top_level_keys_and_names_get_the_nearest(config: Path) -> None:
    text = (config / "routes.yaml").read_text(encoding="utf-8")
    (config / "routes.yaml").write_text(text + "rotues: []\n", encoding="utf-8")
    edit(config / "routes.yaml", lambda d: d["routes"][0].update(system="shaanxi-sl"))
    problems = problems_of(config)
    assert "routes.yaml: rotues: unknown key; did you mean `routes`?" in problems
    assert any(
        "route #1" in p
        and "system: no system 'shaanxi-sl' in systems.yaml; did you mean `shaanxi-si`?" in p
        for p in problems
    )


def test_soap_systems_are_checked_against_their_wsdl(config: Path) -> None:
    add_asmx_system(
        config,
        options={"binding": "{http://bdc.qh.example/ws}RealEstateServiceSoap"},
    )
    assert problems_of(config) == [
        "systems.yaml: system 'qinghai-bdc': options.binding: the WSDL has no SOAP binding"
        " {http://bdc.qh.example/ws}RealEstateServiceSoap; did you mean"
        " `{http://bdc.qh.example/ws/}RealEstateServiceSoap`?"
    ]


def test_a_wsdl_that_does_not_load_is_named(config: Path) -> None:
    (config / "wsdl" / "broken.wsdl").write_text("<wsdl:definitions", encoding="utf-8")
    add_asmx_system(config, wsdl="wsdl/broken.wsdl")
    (problem,) = problems_of(config)
    assert problem.startswith(
        "systems.yaml: system 'qinghai-bdc': wsdl: broken.wsdl cannot be loaded: Invalid XML"
    )


def test_route_mappings_are_checked_against_the_messages(config: Path) -> None:
    add_asmx_system(config)
    add_route(
        config,
        system_operation="CheckCertificate",
        request={"certNumber": "certificate_number", "ownerIdNo": "id_number"},
        response={
            "valid": "CheckCertificateResult",
            "extra": "CheckCertificateResult.detail",
        },
    )
    add_route(
        config,
        operation="verify",
        receiving=["32"],
        system_operation="QueryRegistrations",
        request={"userName": {"const": "u"}, "password": {"env": "X"}, "ownerIdNo": "id_number"},
        response={
            # Open content (a DataSet): columns cannot be checked, the path to the rows can.
            "rows": {"from": "QueryRegistrationsResult.Table", "each": {"unit": "BDCDYH"}},
            "first": "QueryRegistrationsResult.Table.BDCDYH",
            "bad": "QueryRegistrationResult.Table",
        },
    )
    where = "routes.yaml: route #{} (degree-verification/verify → 63)"
    count = len(yaml.safe_load((config / "routes.yaml").read_text())["routes"])
    assert problems_of(config) == [
        f"{where.format(count - 1)}: request.certNumber: no field 'certNumber' in the request of"
        " CheckCertificate; did you mean `certNo`?",
        f"{where.format(count - 1)}: response.extra: from 'CheckCertificateResult.detail':"
        " 'CheckCertificateResult' is a value; it has no field 'detail'",
        f"{where.format(count)}: response.bad: from 'QueryRegistrationResult.Table': no field"
        " 'QueryRegistrationResult' in the answer of QueryRegistrations; did you mean"
        " `QueryRegistrationsResult`?",
        f"{where.format(count)}: response.first: from 'QueryRegistrationsResult.Table.BDCDYH':"
        " 'QueryRegistrationsResult.Table' is an array: index it"
        " (QueryRegistrationsResult.Table.0.BDCDYH) or map its items with 'each'",
    ]


def test_without_a_request_mapping_the_call_data_must_fit_the_request(config: Path) -> None:
    add_asmx_system(config)
    add_route(
        config, system_operation="CheckCertificate", response={"valid": "CheckCertificateResult"}
    )
    problems = problems_of(config)
    assert len(problems) == 3  # name, id_number, certificate_number of degree-verification
    assert all(
        "request: absent, so the call's data goes unchanged, but the request of CheckCertificate"
        " has no field" in p
        for p in problems
    )


def test_soap_header_credentials_are_checked_against_the_wsdl(config: Path) -> None:
    add_asmx_system(
        config,
        auth={
            "type": "soap_header",
            "element": "AuthHeader",
            "fields": {"UserNam": "u", "Password": {"env": "X"}},
        },
    )
    assert problems_of(config) == [
        "systems.yaml: system 'qinghai-bdc': auth.fields.UserNam: no field 'UserNam' in"
        " AuthHeader; did you mean `UserName`?"
    ]
    add_asmx_system(
        config,
        auth={"type": "soap_header", "element": "AuthHeader", "fields": {"Password": "inline"}},
    )
    (problem,) = problems_of(config)
    assert "Password: a credential is given as {env: NAME} or {file: PATH}" in problem
    assert "inline" not in problem.split("Password:")[1]


def test_every_handling_province_of_a_case_can_be_followed(config: Path) -> None:
    edit(
        config / "status-queries.yaml",
        lambda d: d["status_queries"]["application-status"]["answered_by"].pop("gansu-gov"),
    )
    # household-move's move-out goes to Gansu, whose platform no longer answers the query.
    assert problems_of(config) == [
        "routes.yaml: route #8 (household-move/move-out → 62): case.poll_with: no route for"
        " 'application-status' to province 62 (system 'gansu-gov' is not in its answered_by,"
        " status-queries.yaml)"
    ]


def test_a_shared_status_query_needs_a_system_that_answers_it(config: Path) -> None:
    def only_jiangsu(d: dict[str, Any]) -> None:
        d["status_queries"]["application-status"]["answered_by"] = {
            "jiangsu-proof": {"system_operation": "issue_proof"}
        }

    edit(config / "status-queries.yaml", only_jiangsu)
    problems = problems_of(config)
    assert any(
        "service 'disability-card': case: status query 'application-status' is answered by"
        " ['jiangsu-proof'] (status-queries.yaml), and no route of the service goes to one" in p
        for p in problems
    )


def test_a_status_query_is_a_query_and_its_keys_are_checked(config: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        query = d["status_queries"]["application-status"]
        query["operation"]["kind"] = "submit"
        query["answerd_by"] = query.pop("answered_by")

    edit(config / "status-queries.yaml", change)
    problems = problems_of(config)
    assert (
        "status-queries.yaml: status query 'application-status': answerd_by: unknown key;"
        " did you mean `answered_by`?" in problems
    )


def test_a_soap_ticket_platforms_names_are_checked_against_its_wsdls(config: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        calls = d["idps"]["gansu"]["operations"]
        calls["validate"]["name"] = "ticketValidation"
        calls["userinfo"]["datatype"] = "dataType"
        calls["userinfo"]["argument"] = "tokn"

    edit(config / "idps.yaml", change)
    assert problems_of(config) == [
        "idps.yaml: idp 'gansu': operations.userinfo.argument: getUserInfo has no element"
        " 'tokn'; did you mean `token`?",
        "idps.yaml: idp 'gansu': operations.userinfo.datatype: getUserInfo has no element"
        " 'dataType'; known: appmark, sign, time, token",
        "idps.yaml: idp 'gansu': operations.validate: the WSDL's binding has no operation"
        " 'ticketValidation'; did you mean `ticketValidate`?",
    ]


def test_a_secret_in_a_mapping_is_read_at_load_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TB_MAPPING_SECRET", "the-account-password")
    mapping = compile_mapping({"password": {"env": "TB_MAPPING_SECRET"}, "user": {"const": "u"}})
    assert mapping.apply({}) == {"password": "the-account-password", "user": "u"}
    assert "the-account-password" not in repr(mapping)
    unresolved = compile_mapping({"password": {"env": "TB_NOT_SET"}}, resolve_secrets=False)
    assert unresolved.apply({})["password"] != ""
