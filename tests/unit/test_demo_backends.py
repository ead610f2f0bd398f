"""The demo back-ends, exercised directly over real loopback HTTP (no gateway in between)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import httpx
import pytest
import yaml
import zeep
from lxml import etree  # type: ignore[import-untyped,unused-ignore]
from zeep.exceptions import Fault
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport
from zeep.wsse.username import UsernameToken

from gateway.demo import social_insurance
from gateway.demo.backends import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_PORTS,
    DEGREE_KEY_ID,
    DRIVING_CLIENT_ID,
    ENV_NAMES,
    QINGHAI_SI_USERNAME,
    SHAANXI_SI_USERNAME,
    SYSTEM_IDS,
    DemoBackends,
    DemoSecrets,
    start_demo_backends,
)
from gateway.demo.federation import DemoIdentitySecrets
from gateway.demo.residents import (
    DUAN_HAORAN,
    HAN_XUEMEI,
    MA_WENHUA,
    RESIDENTS,
    SU_LANXIN,
    ZHAO_YIMING,
    is_valid_resident_id,
    make_resident_id,
    mask_name,
)
from gateway.demo.social_insurance import CONTEXT_NS, NS, SOAP_ENV, WSSE
from gateway.settings import load_settings

SOAP_NS = {"soap": SOAP_ENV, "si": NS}


@pytest.fixture
def demo_secrets() -> DemoSecrets:
    return DemoSecrets.generate()


@pytest.fixture
async def backends(demo_secrets: DemoSecrets) -> AsyncIterator[DemoBackends]:
    started = await start_demo_backends(demo_secrets)
    try:
        yield started
    finally:
        await started.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- residents and secrets ----------------------------------------------------------------------


def test_resident_ids_carry_a_valid_gb11643_check_character() -> None:
    # The worked example of GB 11643-1999 itself.
    assert make_resident_id("110105", "19491231", 2) == "11010519491231002X"
    assert all(is_valid_resident_id(r.id_number) for r in RESIDENTS)
    assert not is_valid_resident_id(MA_WENHUA.id_number[:17] + "0")
    assert len({r.id_number for r in RESIDENTS}) == len(RESIDENTS)
    assert mask_name("马文华") == "马**"


def test_secrets_round_trip_through_the_environment_and_never_show(
    demo_secrets: DemoSecrets,
) -> None:
    env = demo_secrets.env()
    assert set(env) == set(ENV_NAMES.values())
    assert all(name.startswith("TONGBAN_SECRET_") for name in env)
    assert DemoSecrets.from_env(env) == demo_secrets
    assert DemoSecrets.generate() != demo_secrets
    assert demo_secrets.housing_api_key not in repr(demo_secrets)


def test_systems_yaml_names_the_demo_identifiers_and_environment() -> None:
    raw = yaml.safe_load((DEFAULT_CONFIG_DIR / "systems.yaml").read_text(encoding="utf-8"))
    systems = raw["systems"]
    assert set(systems) == set(SYSTEM_IDS)
    for system_id, port in DEFAULT_PORTS.items():
        assert f"127.0.0.1:{port}" in systems[system_id]["address"]
    assert systems["qinghai-si"]["auth"]["username"] == QINGHAI_SI_USERNAME
    assert systems["shaanxi-si"]["auth"]["username"] == SHAANXI_SI_USERNAME
    assert systems["shaanxi-degree"]["auth"]["key_id"] == DEGREE_KEY_ID
    assert systems["shaanxi-driving"]["auth"]["client_id"] == DRIVING_CLIENT_ID
    referenced = {
        value["env"]
        for system in systems.values()
        for value in system["auth"].values()
        if isinstance(value, dict)
    }
    # The issuers' notice keys are in licences.yaml.
    licences = yaml.safe_load((DEFAULT_CONFIG_DIR / "licences.yaml").read_text(encoding="utf-8"))
    referenced |= {
        issuer["notice_secret"]["env"]
        for issuer in licences["issuers"].values()
        if "notice_secret" in issuer
    }
    assert referenced == set(ENV_NAMES.values())


async def test_backends_listen_on_their_own_ports(backends: DemoBackends) -> None:
    addresses = backends.addresses
    assert set(addresses) == set(SYSTEM_IDS)
    assert len({a.split("/")[2] for a in addresses.values()}) == len(SYSTEM_IDS)
    assert addresses["qinghai-si"].endswith("/ws/social-insurance")
    overrides = backends.overrides()
    assert overrides["shaanxi-housing"] == {"address": addresses["shaanxi-housing"]}
    assert overrides["shaanxi-driving"]["auth"]["token_url"].startswith(
        addresses["shaanxi-driving"]
    )


# --- social insurance (SOAP) ------------------------------------------------------------------


def soap_envelope(
    operation: str,
    fields: Mapping[str, str],
    *,
    username: str | None,
    password: str | None,
    context: Mapping[str, str] | None = None,
) -> bytes:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV})
    header = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Header")
    if username is not None:
        security = etree.SubElement(header, f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
        token = etree.SubElement(security, f"{{{WSSE}}}UsernameToken")
        etree.SubElement(token, f"{{{WSSE}}}Username").text = username
        etree.SubElement(token, f"{{{WSSE}}}Password").text = password
    if context:
        element = etree.SubElement(header, f"{{{CONTEXT_NS}}}CallContext", nsmap={"tb": CONTEXT_NS})
        for name, value in context.items():
            etree.SubElement(element, f"{{{CONTEXT_NS}}}{name}").text = value
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    op = etree.SubElement(body, f"{{{NS}}}{operation}", nsmap={"si": NS})
    for name, value in fields.items():
        etree.SubElement(op, f"{{{NS}}}{name}").text = value
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"))


async def soap_post(http: aiohttp.ClientSession, address: str, envelope: bytes) -> tuple[int, Any]:
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
    async with http.post(address, data=envelope, headers=headers) as response:
        assert response.content_type == "text/xml"
        return response.status, etree.fromstring(await response.read())


def fault_of(root: Any) -> tuple[str, str]:
    fault = root.find("soap:Body/soap:Fault", SOAP_NS)
    assert fault is not None
    return fault.findtext("faultcode"), fault.findtext(
        "detail/si:ServiceFault/si:code", "", SOAP_NS
    )


def person(insurance_number: str, who: Any = MA_WENHUA) -> dict[str, str]:
    return {"aac002": who.id_number, "aac003": who.name, "aac001": insurance_number}


async def test_wsdl_is_served_with_this_deployments_address(
    backends: DemoBackends, http: aiohttp.ClientSession
) -> None:
    for system_id in ("qinghai-si", "shaanxi-si"):
        async with http.get(backends.wsdl_url(system_id)) as response:
            assert response.status == 200
            root = etree.fromstring(await response.read())
        location = root.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address").get("location")
        assert location == backends.addresses[system_id]
        assert root.get("targetNamespace") == NS


async def test_contribution_history_with_a_good_username_token(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    envelope = soap_envelope(
        "GetContributionHistory",
        person("6101002010000123"),
        username=SHAANXI_SI_USERNAME,
        password=demo_secrets.shaanxi_si_password,
        context={"RequestId": "req-1", "CaseId": "case-1", "Purpose": "养老保险关系转移"},
    )
    status, root = await soap_post(http, backends.addresses["shaanxi-si"], envelope)
    assert status == 200
    answer = root.find("soap:Body/si:GetContributionHistoryResponse", SOAP_NS)
    assert answer.findtext("si:aac003", None, SOAP_NS) == "马**"
    records = answer.findall("si:record", SOAP_NS)
    assert [int(r.findtext("si:year", None, SOAP_NS)) for r in records] == list(range(2010, 2024))
    assert int(answer.findtext("si:totalMonths", None, SOAP_NS)) == 13 * 12 + 3
    certificate = answer.find("si:certificate", SOAP_NS)
    content = base64.b64decode(certificate.findtext("si:content", None, SOAP_NS))
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    assert certificate.findtext("si:sealDigest", None, SOAP_NS) == digest
    document = json.loads(content)
    assert document["certificateNo"] == certificate.findtext("si:certificateNo", None, SOAP_NS)
    assert MA_WENHUA.id_number not in content.decode()
    received = backends.recorder("shaanxi-si").for_operation("GetContributionHistory")
    assert [(r.status, r.context["case_id"], r.context["purpose"]) for r in received] == [
        (200, "case-1", "养老保险关系转移")
    ]


@pytest.mark.parametrize(
    ("username", "password"),
    [(SHAANXI_SI_USERNAME, "wrong"), ("someone-else", None), (None, None)],
)
async def test_a_wrong_or_missing_username_token_is_a_client_fault(
    backends: DemoBackends,
    demo_secrets: DemoSecrets,
    http: aiohttp.ClientSession,
    username: str | None,
    password: str | None,
) -> None:
    envelope = soap_envelope(
        "GetContributionHistory",
        person("6101002010000123"),
        username=username,
        password=password or demo_secrets.shaanxi_si_password,
    )
    status, root = await soap_post(http, backends.addresses["shaanxi-si"], envelope)
    assert status == 500
    assert fault_of(root) == ("soap:Client", "AUTHENTICATION_FAILED")


async def test_each_province_has_its_own_credentials_and_data(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    qinghai = backends.addresses["qinghai-si"]
    # Shaanxi's password does not open Qinghai's deployment.
    envelope = soap_envelope(
        "GetContributionHistory",
        person("6301002023004567"),
        username=QINGHAI_SI_USERNAME,
        password=demo_secrets.shaanxi_si_password,
    )
    assert fault_of((await soap_post(http, qinghai, envelope))[1])[1] == "AUTHENTICATION_FAILED"
    # Zhao is insured in Shaanxi only; Ma is known in Qinghai under another number.
    for fields in (person("6104002015000456", ZHAO_YIMING), person("6101002010000123")):
        envelope = soap_envelope(
            "GetContributionHistory",
            fields,
            username=QINGHAI_SI_USERNAME,
            password=demo_secrets.qinghai_si_password,
        )
        status, root = await soap_post(http, qinghai, envelope)
        assert (status, fault_of(root)) == (500, ("soap:Client", "PERSON_NOT_FOUND"))
    envelope = soap_envelope(
        "GetContributionHistory",
        person("6301002023004567"),
        username=QINGHAI_SI_USERNAME,
        password=demo_secrets.qinghai_si_password,
    )
    status, root = await soap_post(http, qinghai, envelope)
    assert status == 200
    assert len(root.findall(".//si:record", SOAP_NS)) == 2


async def test_malformed_and_failing_requests_are_faults(
    backends: DemoBackends,
    demo_secrets: DemoSecrets,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = backends.addresses["shaanxi-si"]
    status, root = await soap_post(http, address, b"<not-xml")
    assert (status, fault_of(root)) == (500, ("soap:Client", "MALFORMED_REQUEST"))

    def broken(*args: object) -> Any:
        raise RuntimeError("database gone")

    monkeypatch.setitem(social_insurance.OPERATIONS, "GetContributionHistory", broken)
    envelope = soap_envelope(
        "GetContributionHistory",
        person("6101002010000123"),
        username=SHAANXI_SI_USERNAME,
        password=demo_secrets.shaanxi_si_password,
    )
    status, root = await soap_post(http, address, envelope)
    assert (status, fault_of(root)) == (500, ("soap:Server", "INTERNAL_ERROR"))
    assert b"database gone" not in etree.tostring(root)


def transfer_fields(**changes: str) -> dict[str, str]:
    fields = {
        **person("6301002023004567"),
        "outProvince": "61",
        "certificateNo": "61SICABCDEF012345",
    }
    fields.update(changes)
    return fields


async def test_submit_transfer_deduplicates_on_the_idempotency_key(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    address = backends.addresses["qinghai-si"]

    async def submit(key: str | None, **changes: str) -> tuple[int, Any]:
        context = {"RequestId": "req", "CaseId": "case-7"}
        if key is not None:
            context["IdempotencyKey"] = key
        envelope = soap_envelope(
            "SubmitTransfer",
            transfer_fields(**changes),
            username=QINGHAI_SI_USERNAME,
            password=demo_secrets.qinghai_si_password,
            context=context,
        )
        return await soap_post(http, address, envelope)

    first_status, first = await submit("key-1")
    retry_status, retry = await submit("key-1")
    assert first_status == retry_status == 200
    accept_no = first.findtext(".//si:acceptNo", None, SOAP_NS)
    assert accept_no.startswith("63SI")
    assert retry.findtext(".//si:acceptNo", None, SOAP_NS) == accept_no
    assert len(backends.qinghai_si.transfers) == 1

    status, reused = await submit("key-1", certificateNo="61SICOTHER0000000")
    assert (status, fault_of(reused)) == (500, ("soap:Client", "IDEMPOTENCY_KEY_REUSED"))
    status, keyless = await submit(None)
    assert fault_of(keyless) == ("soap:Client", "IDEMPOTENCY_KEY_REQUIRED")
    _, other = await submit("key-2")
    assert other.findtext(".//si:acceptNo", None, SOAP_NS) != accept_no
    assert len(backends.qinghai_si.transfers) == 2
    recorder = backends.recorder("qinghai-si")
    assert recorder.idempotency_keys("SubmitTransfer") == ["key-1", "key-1", "key-1", "key-2"]

    backends.qinghai_si.advance_transfer(accept_no, "02")
    envelope = soap_envelope(
        "GetTransferStatus",
        {"acceptNo": accept_no},
        username=QINGHAI_SI_USERNAME,
        password=demo_secrets.qinghai_si_password,
    )
    status, root = await soap_post(http, address, envelope)
    assert status == 200
    assert root.findtext(".//si:status", None, SOAP_NS) == "02"
    envelope = soap_envelope(
        "GetTransferStatus",
        {"acceptNo": "63SI20990101999999"},
        username=QINGHAI_SI_USERNAME,
        password=demo_secrets.qinghai_si_password,
    )
    assert fault_of((await soap_post(http, address, envelope))[1])[1] == "TRANSFER_NOT_FOUND"


async def test_the_wsdl_works_with_zeep_at_a_per_province_address(
    backends: DemoBackends, demo_secrets: DemoSecrets
) -> None:
    wsdl = str(DEFAULT_CONFIG_DIR / "wsdl" / "social-insurance.wsdl")
    async with httpx.AsyncClient() as client:
        transport = AsyncTransport(client=client)  # type: ignore[no-untyped-call]
        soap = zeep.AsyncClient(
            wsdl,
            transport=transport,
            wsse=UsernameToken(  # type: ignore[no-untyped-call]
                QINGHAI_SI_USERNAME, demo_secrets.qinghai_si_password
            ),
        )
        binding = soap.wsdl.bindings[f"{{{NS}}}SocialInsuranceBinding"]
        address = backends.addresses["qinghai-si"]
        proxy = AsyncServiceProxy(soap, binding, address=address)  # type: ignore[no-untyped-call]
        answer = await proxy.SubmitTransfer(
            **transfer_fields(),
            _soapheaders={"CallContext": {"RequestId": "r-9", "IdempotencyKey": "zeep-key"}},
        )
        assert answer.acceptNo.startswith("63SI")
        history = await proxy.GetContributionHistory(**person("6301002023004567"))
        assert [r.year for r in history.record] == [2023, 2024]
        with pytest.raises(Fault) as caught:
            await proxy.GetContributionHistory(**person("6301002020001122", DUAN_HAORAN))
        assert caught.value.code.endswith("Client")
    assert backends.recorder("qinghai-si").idempotency_keys() == ["zeep-key"]


# --- housing fund (REST, API key) -------------------------------------------------------------


async def test_housing_account_needs_the_api_key_and_the_holders_id(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    url = backends.addresses["shaanxi-housing"] + "/api/accounts/610100201300789012"
    query = {"idCardNo": HAN_XUEMEI.id_number}
    async with http.get(url, params=query) as response:
        assert response.status == 401
    async with http.get(url, params=query, headers={"X-API-Key": "nope"}) as response:
        assert response.status == 401
    headers = {"X-API-Key": demo_secrets.housing_api_key, "X-Tongban-Case-Id": "case-4"}
    async with http.get(url, params=query, headers=headers) as response:
        assert response.status == 200
        account = await response.json()
    assert account["holderName"] == "韩**"
    assert account["balance"] == "48210.35"
    assert account["status"] == "02"
    other = {"idCardNo": ZHAO_YIMING.id_number}
    async with http.get(url, params=other, headers=headers) as response:
        assert response.status == 404
    recorder = backends.recorder("shaanxi-housing")
    assert [(r.operation, r.status) for r in recorder.requests] == [
        ("get_account", 401),
        ("get_account", 401),
        ("get_account", 200),
        ("get_account", 404),
    ]
    assert recorder.requests[2].context == {"case_id": "case-4"}


async def test_housing_transfer_deduplicates_on_idempotency_key(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    base = backends.addresses["shaanxi-housing"]
    body = {
        "accountNo": "610100201300789012",
        "idCardNo": HAN_XUEMEI.id_number,
        "holderName": HAN_XUEMEI.name,
        "inCentreCode": "630100",
    }

    async def post(key: str | None, payload: Mapping[str, str]) -> tuple[int, Any]:
        headers = {"X-API-Key": demo_secrets.housing_api_key}
        if key is not None:
            headers["Idempotency-Key"] = key
        async with http.post(base + "/api/transfers", json=payload, headers=headers) as response:
            return response.status, await response.json()

    assert (await post(None, body))[0] == 400
    status, first = await post("k-1", body)
    assert status == 201
    status, again = await post("k-1", body)
    assert (status, again) == (200, first)
    assert (await post("k-1", {**body, "inCentreCode": "630200"}))[0] == 422
    status, conflict = await post("k-2", body)
    assert (status, conflict["error"], conflict["transferId"]) == (
        409,
        "transfer_exists",
        first["transferId"],
    )
    assert len(backends.housing.transfers) == 1
    not_sealed = {
        **body,
        "accountNo": "610400201500456789",
        "idCardNo": ZHAO_YIMING.id_number,
        "holderName": ZHAO_YIMING.name,
    }
    assert (await post("k-3", not_sealed))[1]["error"] == "account_not_sealed"

    headers = {"X-API-Key": demo_secrets.housing_api_key}
    async with http.get(f"{base}/api/transfers/{first['transferId']}", headers=headers) as r:
        assert (r.status, (await r.json())["amount"]) == (200, "48210.35")
    async with http.get(f"{base}/api/transfers/nope", headers=headers) as r:
        assert r.status == 404
    keys = backends.recorder("shaanxi-housing").idempotency_keys("create_transfer")
    assert keys == ["k-1", "k-1", "k-1", "k-2", "k-3"]


# --- degree verification (REST, HMAC) ---------------------------------------------------------


def hmac_headers(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    *,
    key_id: str = DEGREE_KEY_ID,
    when: datetime | None = None,
    query: list[tuple[str, str]] | None = None,
) -> dict[str, str]:
    """The signature exactly as the contract describes it, written independently here."""
    date = format_datetime(when or datetime.now(UTC), usegmt=True)
    canonical = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(query or []))
    text = "\n".join((method, path, canonical, date, hashlib.sha256(body).hexdigest()))
    mac = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    return {
        "X-Tb-Key": key_id,
        "X-Tb-Date": date,
        "X-Tb-Signature": base64.b64encode(mac).decode(),
        "Content-Type": "application/json",
    }


async def test_degree_verification_accepts_a_good_signature(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    url = backends.addresses["shaanxi-degree"] + "/api/verify"
    secret = demo_secrets.degree_hmac_secret

    async def verify(payload: Mapping[str, str]) -> dict[str, Any]:
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = hmac_headers(secret, "POST", "/api/verify", body)
        async with http.post(url, data=body, headers=headers) as response:
            assert response.status == 200
            answer: dict[str, Any] = await response.json()
            return answer

    answer = await verify(
        {"xm": SU_LANXIN.name, "sfzh": SU_LANXIN.id_number, "zsbh": "106971202005123456"}
    )
    assert (answer["code"], answer["msg"]) == ("0000", "成功")
    assert isinstance(answer["result"], str)
    result = json.loads(answer["result"])
    assert result == {
        "xm": "苏**",
        "xlcc": "本科",
        "xwmc": "工学学士",
        "yxmc": "秦岭理工大学",
        "byrq": "2020-06-30",
        "sfyx": "1",
        "hyjg": "一致",
    }
    mismatch = await verify(
        {"xm": "苏兰", "sfzh": SU_LANXIN.id_number, "zsbh": "106971202005123456"}
    )
    assert json.loads(mismatch["result"])["sfyx"] == "0"
    unknown = await verify(
        {"xm": ZHAO_YIMING.name, "sfzh": ZHAO_YIMING.id_number, "zsbh": "106971202005123456"}
    )
    assert (unknown["code"], unknown["result"]) == ("1001", "")
    assert (await verify({"xm": "x"}))["code"] == "1002"


@pytest.mark.parametrize(
    "tamper",
    ["wrong-secret", "wrong-key-id", "stale-date", "body-changed", "path-changed", "unsigned"],
)
async def test_degree_verification_refuses_a_bad_signature(
    backends: DemoBackends,
    demo_secrets: DemoSecrets,
    http: aiohttp.ClientSession,
    tamper: str,
) -> None:
    url = backends.addresses["shaanxi-degree"] + "/api/verify"
    body = json.dumps(
        {"xm": SU_LANXIN.name, "sfzh": SU_LANXIN.id_number, "zsbh": "106971202005123456"}
    ).encode()
    secret = "not-the-secret" if tamper == "wrong-secret" else demo_secrets.degree_hmac_secret
    headers = hmac_headers(
        secret,
        "POST",
        "/api/other" if tamper == "path-changed" else "/api/verify",
        body,
        key_id="someone" if tamper == "wrong-key-id" else DEGREE_KEY_ID,
        when=datetime.now(UTC) - timedelta(minutes=10) if tamper == "stale-date" else None,
    )
    if tamper == "unsigned":
        del headers["X-Tb-Signature"]
    sent = body.replace(b"106971", b"106972") if tamper == "body-changed" else body
    async with http.post(url, data=sent, headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["code"] == "4010"
    assert backends.recorder("shaanxi-degree").requests[-1].status == 401


async def test_degree_signature_covers_the_sorted_query_string(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    body = json.dumps({"xm": SU_LANXIN.name, "sfzh": SU_LANXIN.id_number, "zsbh": "1"}).encode()
    query = [("z", "last one"), ("a", "中")]
    url = backends.addresses["shaanxi-degree"] + "/api/verify?z=last%20one&a=%E4%B8%AD"
    headers = hmac_headers(
        demo_secrets.degree_hmac_secret, "POST", "/api/verify", body, query=query
    )
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == 200
    headers = hmac_headers(demo_secrets.degree_hmac_secret, "POST", "/api/verify", body)
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == 401


# --- e-driving licence (REST, OAuth2 client credentials) --------------------------------------


async def fetch_token(
    http: aiohttp.ClientSession,
    backends: DemoBackends,
    secret: str,
    *,
    basic: bool = True,
    form: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    data = {"grant_type": "client_credentials", **(form or {})}
    headers = {}
    if basic:
        pair = f"{quote_plus(DRIVING_CLIENT_ID)}:{quote_plus(secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        data.update(client_id=DRIVING_CLIENT_ID, client_secret=secret)
    async with http.post(
        backends.overrides()["shaanxi-driving"]["auth"]["token_url"], data=data, headers=headers
    ) as response:
        return response.status, await response.json()


async def test_driving_licence_token_flow_and_bearer_check(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    secret = demo_secrets.driving_client_secret
    status, token = await fetch_token(http, backends, secret, form={"scope": "licence:verify"})
    assert status == 200
    assert (token["token_type"], token["scope"], token["expires_in"]) == (
        "Bearer",
        "licence:verify",
        600,
    )
    status, by_form = await fetch_token(http, backends, secret, basic=False)
    assert status == 200
    assert by_form["access_token"] != token["access_token"]
    assert (await fetch_token(http, backends, "wrong"))[1]["error"] == "invalid_client"
    bad_grant = await fetch_token(http, backends, secret, form={"grant_type": "password"})
    assert bad_grant == (
        400,
        {"error": "unsupported_grant_type", "error_description": "only client_credentials"},
    )
    assert (await fetch_token(http, backends, secret, form={"scope": "admin"}))[0] == 400

    url = backends.addresses["shaanxi-driving"] + "/api/licences/verify"
    payload = {
        "idNumber": ZHAO_YIMING.id_number,
        "name": ZHAO_YIMING.name,
        "fileNo": "610100345678",
    }
    async with http.post(url, json=payload) as response:
        assert response.status == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    async with http.post(url, json=payload, headers=bearer) as response:
        assert response.status == 200
        answer = await response.json()
    assert (answer["valid"], answer["holderName"], answer["drivingClass"]) == (True, "赵**", "C1")

    async with http.post(url, json={**payload, "name": "赵二"}, headers=bearer) as response:
        mismatch = await response.json()
    # A mismatch reveals nothing about the licence.
    assert set(mismatch) == {"valid", "reason", "checkedAt"}
    assert (mismatch["valid"], mismatch["reason"]) == (False, "no_match")
    overdue = {"idNumber": SU_LANXIN.id_number, "name": SU_LANXIN.name, "fileNo": "610100998877"}
    async with http.post(url, json=overdue, headers=bearer) as response:
        assert (await response.json())["reason"] == "licence_not_valid"

    driving = backends.driving
    qr = driving.issue_qr("610100345678", ttl=60)
    async with http.post(url, json={**payload, "qrCode": qr}, headers=bearer) as response:
        assert (await response.json())["qrChecked"] is True
    real_clock = driving.clock
    driving.clock = lambda: real_clock() + 120
    async with http.post(url, json={**payload, "qrCode": qr}, headers=bearer) as response:
        assert (await response.json())["reason"] == "qr_expired"
    driving.clock = lambda: real_clock() + 3600
    async with http.post(url, json=payload, headers=bearer) as response:
        assert response.status == 401
    assert driving.tokens_issued == 2


# --- injected trouble -------------------------------------------------------------------------


async def test_injected_outage_answers_503_then_recovers(
    backends: DemoBackends, demo_secrets: DemoSecrets, http: aiohttp.ClientSession
) -> None:
    recorder = backends.recorder("shaanxi-housing")
    recorder.trouble.fail_next = 2
    url = backends.addresses["shaanxi-housing"] + "/api/accounts/610100201000123456"
    params = {"idCardNo": MA_WENHUA.id_number}
    headers = {"X-API-Key": demo_secrets.housing_api_key}
    statuses = []
    for _ in range(3):
        async with http.get(url, params=params, headers=headers) as response:
            statuses.append(response.status)
            if response.status == 503:
                assert response.headers["Retry-After"] == "1"
    assert statuses == [503, 503, 200]
    assert [r.status for r in recorder.requests] == statuses
    assert recorder.count == 3


def test_the_demo_config_loads_with_the_demo_secrets(
    demo_secrets: DemoSecrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**demo_secrets.env(), **DemoIdentitySecrets.generate().env()}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TONGBAN_PAIRWISE_SECRET", "p" * 40)
    settings = load_settings(Path(DEFAULT_CONFIG_DIR))
    assert set(settings.systems) == set(SYSTEM_IDS)
    assert {(r.service, r.operation) for r in settings.routes} >= {
        ("pension-transfer", "contribution-history"),
        ("pension-transfer", "transfer-application"),
        ("housing-fund-transfer", "transfer"),
        ("degree-verification", "verify"),
        ("driving-licence-verification", "verify"),
    }
