"""Whose data: every routed call (REST and SOAP back-ends) and every case is bound to its
declared data subject before anything is sent, through the real app to the demo back-ends.

Someone else's ID number is refused (403 client.not_data_subject, nothing sent, a refused
record); a grant the consent book accepts opens it and is named to the back-end and in the
audit record; a free-text reference opens nothing; a subject field sent twice is refused; a
Counter token is the document the clerk checked; an enterprise's operator reaches that
enterprise only; idempotency keys are the caller's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.consent.contract import DataSubject
from gateway.demo.backends import QINGHAI_GOV, SHAANXI_HOUSING, SHAANXI_SI
from gateway.demo.banner import requests_script
from gateway.demo.cases import S8_CASE, S10_CASE, S13_CASE
from gateway.demo.examples import DEMO_CALLS, REFUSED_CALL
from gateway.demo.portals import qinghai_portal
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, SU_LANXIN
from gateway.demo.runner import seed_demo_consents
from gateway.demo.subject_check import LINK_SECRET_ENV
from gateway.identity.subject_keys import province_key, province_person_hash
from tests.consent_books import MemoryConsentBook, TestGrant
from tests.flows.conftest import CONFIG_DIR, Journey, audit_verify, chain_records, demo_journey
from tests.stores.backends import PG_DSN, drop_schema, postgres_or_skip, run_private

MA_ACCOUNT = "610100201000123456"
HAN_ACCOUNT = "610100201300789012"
PORTAL = "demo-portal-qinghai"


@pytest.fixture
def book() -> MemoryConsentBook:
    return MemoryConsentBook()


@pytest.fixture
async def journey(
    tmp_path: Path,
    log_stream: io.BytesIO,
    monkeypatch: pytest.MonkeyPatch,
    book: MemoryConsentBook,
) -> AsyncIterator[Journey]:
    async with demo_journey(tmp_path, monkeypatch, consent_book=book) as journey:
        yield journey
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


def account_query(id_number: str, account: str, **extra: Any) -> dict[str, Any]:
    return {
        "operation": "account-query",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "住房公积金异地转移接续",
        "data": {"account_no": account, "id_number": id_number},
        **extra,
    }


async def raw_post(
    journey: Journey, path: str, raw: bytes, token: str = "citizen-l3", **headers: str
) -> tuple[int, dict[str, Any]]:
    response = await journey.client.post(
        path,
        data=raw,
        headers={**journey.auth(token), "Content-Type": "application/json", **headers},
    )
    return response.status, await response.json(content_type=None)


# --- the rule ---------------------------------------------------------------------------------


async def test_someone_elses_id_number_is_refused_before_the_back_end(journey: Journey) -> None:
    fund = journey.backends.recorder(SHAANXI_HOUSING)
    # 马文华 (L3) names 韩雪梅's account and ID number; a free-text reference opens nothing.
    status, problem = await journey.call(
        "housing-fund-transfer",
        account_query(HAN_XUEMEI.id_number, HAN_ACCOUNT, authorisation_ref="anything-at-all"),
    )
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    assert HAN_XUEMEI.id_number not in str(problem)
    assert fund.count == 0

    # The transfer of her account (a submission) likewise.
    status, problem = await journey.call(
        "housing-fund-transfer",
        {
            **account_query(HAN_XUEMEI.id_number, HAN_ACCOUNT),
            "operation": "transfer",
            "data": {
                "account_no": HAN_ACCOUNT,
                "id_number": HAN_XUEMEI.id_number,
                "name": HAN_XUEMEI.name,
                "in_centre_code": "630100",
            },
        },
        **{"Idempotency-Key": "other-persons-transfer"},
    )
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    assert fund.count == 0
    assert journey.backends.housing.transfers == {}

    # The refusal is in the audit chain, naming her only by her key.
    refused = [r.event for r in await chain_records(journey) if r.event.outcome == "refused"]
    assert len(refused) == 2
    han = journey.keys.person(HAN_XUEMEI.id_number).key
    assert all(e.error_code == "client.not_data_subject" for e in refused)
    assert all(e.extra["subjects"] == [han] for e in refused)
    assert "grant" not in refused[0].extra  # a free-text reference is no grant
    assert all(e.attempts == 0 for e in refused)

    # His own account goes through, and the fund centre is told whose it is.
    status, answer = await journey.call(
        "housing-fund-transfer", account_query(MA_WENHUA.id_number, MA_ACCOUNT)
    )
    assert status == 200, answer
    (seen,) = fund.requests
    key = province_key(_link_secret(), "61")
    assert seen.context["subjects"] == "person:" + province_person_hash(
        key, "111", MA_WENHUA.id_number
    )
    assert seen.context["source_province"] == "63"
    assert seen.context["client"] == PORTAL
    ok = [
        r.event
        for r in await chain_records(journey)
        if r.event.request_id == answer["request_id"] and r.event.outcome != "refused"
    ]
    assert [e.extra["subjects"] for e in ok] == [[journey.keys.person(MA_WENHUA.id_number).key]] * 2


def _link_secret() -> str:
    return os.environ[LINK_SECRET_ENV]


async def test_a_soap_route_refuses_someone_elses_id_number(journey: Journey) -> None:
    status, problem = await journey.call(
        "pension-transfer",
        {
            "operation": "contribution-history",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "企业职工养老保险关系转移接续",
            "data": {
                "id_number": HAN_XUEMEI.id_number,
                "name": HAN_XUEMEI.name,
                "insurance_number": "6101002010000123",
            },
        },
    )
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    assert journey.backends.recorder(SHAANXI_SI).count == 0


async def test_a_case_about_someone_else_is_refused_and_nothing_is_created(
    journey: Journey,
) -> None:
    body = {
        "service": "medical-filing",
        "receiving_province": "63",
        "handling_province": "63",
        "purpose": "异地就医备案",
        "data": {
            "id_number": HAN_XUEMEI.id_number,
            "name": HAN_XUEMEI.name,
            "treatment_province": "61",
            "filing_type": "resident-elsewhere",
            "valid_from": "2026-12-01",
        },
        "materials": [
            {
                "code": "medical-insurance-voucher",
                "ref": "urn:elicence:1",
                "digest": "sha256:" + "a" * 64,
            }
        ],
    }
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": "case-other-1"}
    )
    problem = await response.json()
    assert (response.status, problem["code"]) == (403, "client.not_data_subject"), problem
    listed = await journey.client.get("/api/v1/cases", headers=journey.auth())
    assert (await listed.json())["cases"] == []
    assert not journey.backends.recorder(QINGHAI_GOV).requests
    refused = [r.event for r in await chain_records(journey) if r.event.outcome == "refused"]
    assert [(e.type.value, e.error_code, e.service) for e in refused] == [
        ("case_transition", "client.not_data_subject", "medical-filing")
    ]
    assert refused[0].extra["subjects"] == [journey.keys.person(HAN_XUEMEI.id_number).key]


# --- grants -----------------------------------------------------------------------------------


async def test_a_grant_opens_someone_elses_data_and_is_named_everywhere(
    journey: Journey, book: MemoryConsentBook
) -> None:
    han = journey.keys.person(HAN_XUEMEI.id_number)
    book.grants["g-han-1"] = TestGrant(
        subject=han, client_id=PORTAL, service="housing-fund-transfer", operation="account-query"
    )
    status, answer = await journey.call(
        "housing-fund-transfer", account_query(HAN_XUEMEI.id_number, HAN_ACCOUNT, consent="g-han-1")
    )
    assert status == 200, answer
    (ask,) = book.asks
    assert (ask.grant_id, ask.subject, ask.service, ask.operation) == (
        "g-han-1",
        han,
        "housing-fund-transfer",
        "account-query",
    )
    assert ask.requester.client_id == PORTAL
    assert ask.requester.person == DataSubject(
        "person", journey.keys.person(MA_WENHUA.id_number).key
    )
    assert ask.purpose == "住房公积金异地转移接续"
    (seen,) = journey.backends.recorder(SHAANXI_HOUSING).requests
    assert seen.context["authorisation_ref"] == "g-han-1"
    key = province_key(_link_secret(), "61")
    assert seen.context["subjects"] == "person:" + province_person_hash(
        key, "111", HAN_XUEMEI.id_number
    )
    events = [
        r.event for r in await chain_records(journey) if r.event.request_id == answer["request_id"]
    ]
    assert [(e.extra["subjects"], e.extra["grant"]) for e in events] == [([han.key], "g-han-1")] * 2


FUND = "housing-fund-transfer"
GRANTS: dict[str, Callable[[DataSubject], TestGrant | None]] = {
    "unknown": lambda han: None,
    "other-subject": lambda han: TestGrant(DataSubject("person", "someone-else"), PORTAL, FUND),
    "other-requester": lambda han: TestGrant(han, "another-client", FUND),
    "other-service": lambda han: TestGrant(han, PORTAL, "degree-verification"),
    "other-operation": lambda han: TestGrant(han, PORTAL, FUND, operation="transfer"),
    "other-purpose": lambda han: TestGrant(han, PORTAL, FUND, purpose="another purpose"),
    "used-up": lambda han: TestGrant(han, PORTAL, FUND, uses=0),
}


@pytest.mark.parametrize("case", sorted(GRANTS))
async def test_a_grant_that_does_not_cover_the_call_is_refused(
    journey: Journey, book: MemoryConsentBook, case: str
) -> None:
    grant = GRANTS[case](journey.keys.person(HAN_XUEMEI.id_number))
    consent = "g"
    if grant is not None:
        book.grants[consent] = grant
    status, problem = await journey.call(
        "housing-fund-transfer", account_query(HAN_XUEMEI.id_number, HAN_ACCOUNT, consent=consent)
    )
    assert (status, problem["code"]) == (403, "client.grant_refused"), problem
    assert journey.backends.recorder(SHAANXI_HOUSING).count == 0
    refused = [r.event for r in await chain_records(journey) if r.event.outcome == "refused"]
    assert [(e.error_code, e.extra["grant"]) for e in refused] == [
        ("client.grant_refused", consent)
    ]


async def test_the_consent_store_down_fails_closed_and_own_data_goes_on(
    journey: Journey, book: MemoryConsentBook
) -> None:
    book.down = True
    status, problem = await journey.call(
        "housing-fund-transfer", account_query(HAN_XUEMEI.id_number, HAN_ACCOUNT, consent="g-1")
    )
    assert (status, problem["code"]) == (503, "gateway.consent_store_unavailable"), problem
    assert journey.backends.recorder(SHAANXI_HOUSING).count == 0
    status, answer = await journey.call(
        "housing-fund-transfer", account_query(MA_WENHUA.id_number, MA_ACCOUNT)
    )
    assert status == 200, answer
    assert book.asks[-1].grant_id == "g-1"  # his own data never asked the book


async def test_the_apps_own_book_refuses_a_grant_it_does_not_hold(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with demo_journey(tmp_path, monkeypatch) as journey:  # the configured consent store
        status, problem = await journey.call(
            "housing-fund-transfer",
            account_query(HAN_XUEMEI.id_number, HAN_ACCOUNT, consent="any-grant"),
        )
        assert status == 403, problem
        assert problem["code"].startswith("client.grant_"), problem
        assert journey.backends.recorder(SHAANXI_HOUSING).count == 0


# --- ambiguous subject fields -----------------------------------------------------------------


async def test_a_subject_field_twice_or_in_two_spellings_is_refused(journey: Journey) -> None:
    path = "/api/v1/services/housing-fund-transfer/calls"
    envelope = account_query(MA_WENHUA.id_number, MA_ACCOUNT)
    text = orjson.dumps(envelope).decode()
    # The same key twice in one object: JSON parsers disagree on which one wins.
    twice = text.replace(
        f'"id_number":"{MA_WENHUA.id_number}"',
        f'"id_number":"{MA_WENHUA.id_number}","id_number":"{HAN_XUEMEI.id_number}"',
    )
    status, problem = await raw_post(journey, path, twice.encode())
    assert (status, problem["code"]) == (400, "client.subject_field_ambiguous"), problem
    # The same key written with an escape is the same key.
    escaped = text.replace(
        '"account_no"', '"id\\u005fnumber":"' + HAN_XUEMEI.id_number + '","account_no"'
    )
    status, problem = await raw_post(journey, path, escaped.encode())
    assert (status, problem["code"]) == (400, "client.subject_field_ambiguous"), problem
    # A second spelling beside it.
    spelled = {**envelope, "data": {**envelope["data"], "idNumber": HAN_XUEMEI.id_number}}
    status, problem = await journey.call("housing-fund-transfer", spelled)
    assert (status, problem["code"]) == (400, "client.subject_field_ambiguous"), problem
    assert journey.backends.recorder(SHAANXI_HOUSING).count == 0

    # Cases too, before anything is written.
    case = orjson.dumps(
        {
            "service": "medical-filing",
            "receiving_province": "63",
            "handling_province": "63",
            "purpose": "异地就医备案",
            "data": {
                "id_number": MA_WENHUA.id_number,
                "name": MA_WENHUA.name,
                "treatment_province": "61",
                "filing_type": "resident-elsewhere",
                "valid_from": "2026-12-01",
            },
        }
    ).decode()
    twice = case.replace(
        f'"id_number":"{MA_WENHUA.id_number}"',
        f'"id_number":"{HAN_XUEMEI.id_number}","id_number":"{MA_WENHUA.id_number}"',
    )
    status, problem = await raw_post(
        journey, "/api/v1/cases", twice.encode(), **{"Idempotency-Key": "ambiguous-1"}
    )
    assert (status, problem["code"]) == (400, "client.subject_field_ambiguous"), problem
    listed = await journey.client.get("/api/v1/cases", headers=journey.auth())
    assert (await listed.json())["cases"] == []


# --- who the principal is ---------------------------------------------------------------------


async def test_a_counter_token_is_the_document_the_clerk_checked(journey: Journey) -> None:
    counter = journey.issuer.issue(
        "demo-" + SU_LANXIN.key,
        "Counter",
        client_id="window-61-xian",
        actor="clerk-61-0007",
        actor_role="clerk",
        roles=["clerk"],
        person=journey.keys.person(SU_LANXIN.id_number).key,
    )
    journey.tokens["counter"] = {"token": counter}
    body = dict(S10_CASE[3])
    other = {**body, "data": {**body["data"], "id_number": HAN_XUEMEI.id_number}}
    response = await journey.client.post(
        "/api/v1/cases",
        json=other,
        headers={**journey.auth("counter"), "Idempotency-Key": "s10-other-0001"},
    )
    problem = await response.json()
    assert (response.status, problem["code"]) == (403, "client.not_data_subject"), problem
    response = await journey.client.post(
        "/api/v1/cases",
        json=body,
        headers={**journey.auth("counter"), "Idempotency-Key": "s10-own-00001"},
    )
    assert response.status == 202, await response.text()


async def test_an_enterprise_operator_reaches_its_own_enterprise_only(journey: Journey) -> None:
    _scenario, _title, _key, body = S8_CASE
    operator = journey.issuer.issue(
        "demo-enterprise-xian-qinchuan",
        "LP",
        client_id=PORTAL,
        actor="demo-" + MA_WENHUA.key,
        actor_role="agent",
        enterprise=journey.keys.enterprise(body["data"]["credit_code"]).key,
    )
    journey.tokens["operator"] = {"token": operator}
    other = {**body, "data": {**body["data"], "credit_code": "91630100MA7XXXXX1B"}}
    response = await journey.client.post(
        "/api/v1/cases",
        json=other,
        headers={**journey.auth("operator"), "Idempotency-Key": "s8-other-00001"},
    )
    problem = await response.json()
    assert (response.status, problem["code"]) == (403, "client.not_data_subject"), problem
    response = await journey.client.post(
        "/api/v1/cases",
        json=body,
        headers={**journey.auth("operator"), "Idempotency-Key": "s8-own-000001"},
    )
    assert response.status == 202, await response.text()


# --- idempotency keys are the caller's own -----------------------------------------------------


async def test_another_persons_idempotency_key_gets_nothing_of_theirs(journey: Journey) -> None:
    han_token = journey.issuer.issue(
        "demo-" + HAN_XUEMEI.key,
        "L3",
        client_id=PORTAL,
        person=journey.keys.person(HAN_XUEMEI.id_number).key,
    )
    journey.tokens["han"] = {"token": han_token}

    def transfer(who: Any, account: str) -> dict[str, Any]:
        return {
            **account_query(who.id_number, account),
            "operation": "transfer",
            "data": {
                "account_no": account,
                "id_number": who.id_number,
                "name": who.name,
                "in_centre_code": "630100",
            },
        }

    key = {"Idempotency-Key": "shared-key-0001"}
    status, mine = await journey.call(
        "housing-fund-transfer", transfer(MA_WENHUA, MA_ACCOUNT), **key
    )
    assert status == 200, mine
    # She replays his key and his body: refused (not her data), and no receipt of his.
    status, problem = await journey.call(
        "housing-fund-transfer", transfer(MA_WENHUA, MA_ACCOUNT), token="han", **key
    )
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    assert "transfer_id" not in str(problem)
    # The same key for her own transfer is another key at the fund centre: her own transfer.
    status, hers = await journey.call(
        "housing-fund-transfer", transfer(HAN_XUEMEI, HAN_ACCOUNT), token="han", **key
    )
    assert status == 200, hers
    assert hers["data"]["transfer_id"] != mine["data"]["transfer_id"]
    sent = journey.backends.recorder(SHAANXI_HOUSING).for_operation("create_transfer")
    forwarded = [r.idempotency_key for r in sent]
    assert len(set(forwarded)) == 2
    assert "shared-key-0001" not in forwarded


# --- both case stores -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def case_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """The demo's configuration with its case store on SQLite or on PostgreSQL (fresh schema)."""
    if request.param == "sqlite":
        yield CONFIG_DIR
        return
    postgres_or_skip()
    schema = f"t_subj_{secrets.token_hex(6)}"
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    path = config / "gateway.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cases"]["store"] = {"backend": "postgres", "dsn": PG_DSN, "schema": schema}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    try:
        yield config
    finally:
        run_private(drop_schema(schema))


async def test_a_co_applicants_grant_makes_the_case_and_nothing_without_it(
    tmp_path: Path,
    log_stream: io.BytesIO,
    monkeypatch: pytest.MonkeyPatch,
    case_config: Path,
) -> None:
    book = MemoryConsentBook()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    async with demo_journey(data_dir, monkeypatch, config_dir=case_config, consent_book=book) as j:
        han = j.keys.person(HAN_XUEMEI.id_number)
        book.grants["g-move"] = TestGrant(han, PORTAL, "household-move", uses=1)
        body = {
            "service": "household-move",
            "mode": "joint",
            "receiving_province": "63",
            "parts": [
                {"handling_province": "62", "operation": "move-out"},
                {"handling_province": "63", "operation": "move-in"},
            ],
            "purpose": "兰西城市群户口迁移",
            "data": {
                "id_number": HAN_XUEMEI.id_number,
                "name": HAN_XUEMEI.name,
                "from_region": "620102",
                "to_region": "630104",
                "reason": "family",
            },
            "materials": [
                {
                    "code": "resident-id-card",
                    "ref": "urn:elicence:1",
                    "digest": "sha256:" + "3" * 64,
                },
                {
                    "code": "household-register",
                    "ref": "urn:elicence:2",
                    "digest": "sha256:" + "3" * 64,
                },
            ],
        }

        async def submit(key: str, **extra: Any) -> tuple[int, dict[str, Any]]:
            response = await j.client.post(
                "/api/v1/cases",
                json={**body, **extra},
                headers={**j.auth(), "Idempotency-Key": key},
            )
            return response.status, await response.json()

        status, problem = await submit("move-other-0001")
        assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
        status, receipt = await submit("move-other-0002", consent="g-move")
        assert status == 202, receipt
        # The same application again is the same case: the one-use grant is not used twice.
        status, again = await submit("move-other-0002", consent="g-move")
        assert (status, again["case_id"]) == (202, receipt["case_id"])
        assert len(book.asks) == 1
        listed = await j.client.get("/api/v1/cases", headers=j.auth())
        assert [c["case_id"] for c in (await listed.json())["cases"]] == [receipt["case_id"]]
        intake = [
            r.event
            for r in await chain_records(j)
            if r.event.case_id == receipt["case_id"] and r.event.outcome == "received"
        ]
        assert [(e.extra["subjects"], e.extra["grant"]) for e in intake] == [([han.key], "g-move")]
    assert await asyncio.to_thread(audit_verify, data_dir) == 0


async def test_the_demos_printed_examples_run_and_the_refused_one_is_refused(
    journey: Journey,
) -> None:
    for call in DEMO_CALLS:
        headers = {"Idempotency-Key": call.idempotency_key} if call.idempotency_key else {}
        status, answer = await journey.call(call.service, call.body, call.token_key, **headers)
        assert status == 200, (call.title, answer)
    fund = journey.backends.recorder(SHAANXI_HOUSING)
    before = fund.count
    status, problem = await journey.call(
        REFUSED_CALL.service, REFUSED_CALL.body, REFUSED_CALL.token_key
    )
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    assert fund.count == before
    script = requests_script("http://127.0.0.1:8080", journey.tokens, "")
    assert REFUSED_CALL.title in script
    assert HAN_XUEMEI.id_number in script  # the example names her number on purpose


async def test_the_demo_seeds_the_s13_sellers_consent_its_portals_present(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tongban demo` gives the S13 seller's consent to the portals and the window that file the
    buyer's application; a portal's application presents it and is taken in by the app's own
    consent book, and without it the same application is refused."""
    async with demo_journey(tmp_path, monkeypatch) as journey:
        gateway = str(journey.client.make_url("")).rstrip("/")
        portals = {PORTAL: qinghai_portal(gateway, "portal-secret")}
        seeding = seed_demo_consents(portals, journey.keys)(journey.client.app)
        await seeding.__anext__()
        assert set(portals[PORTAL].consents) == {PORTAL}
        body = S13_CASE[3]
        response = await journey.client.post(
            "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": "s13-seed-no"}
        )
        problem = await response.json()
        assert (response.status, problem["code"]) == (403, "client.not_data_subject"), problem
        response = await journey.client.post(
            "/api/v1/cases",
            json=portals[PORTAL].with_consent(body, PORTAL),
            headers={**journey.auth(), "Idempotency-Key": "s13-seed-yes"},
        )
        assert response.status == 202, await response.text()
        with contextlib.suppress(StopAsyncIteration):
            await seeding.__anext__()
