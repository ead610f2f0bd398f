"""The holder's grants over real HTTP: /api/v1/me/consents and /api/v1/me/delegations on the demo
gateway, the book the data-subject rule asks, and the audit records each step leaves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.audit.record import AuditEvent, AuditRecord, EventType
from gateway.consent.contract import ConsentBook, GrantAsk, GrantRefused, Requester
from gateway.consent.subjects import SubjectDigest
from gateway.demo.legal_idp import QINLING_TECH, TESTING_CENTRE
from gateway.demo.residents import MA_WENHUA, SU_LANXIN
from gateway.http.consents import SUBJECT_DIGEST, SUBJECT_KEYS, AppConsentBook
from gateway.http.keys import STATE
from gateway.identity.subject_keys import SubjectKeys
from tests.flows.conftest import Journey

BANK = "demo-portal-shaanxi"
SERVICE = "housing-fund-transfer"


def _keys(journey: Journey) -> SubjectKeys:
    keys: SubjectKeys = journey.client.app[SUBJECT_KEYS]
    return keys


def _digest(journey: Journey) -> SubjectDigest:
    digest: SubjectDigest = journey.client.app[SUBJECT_DIGEST]
    return digest


def _person(journey: Journey, resident: Any, client: str = "demo-portal-qinghai") -> dict[str, str]:
    person = _keys(journey).person(resident.id_number)
    token = journey.issuer.issue(f"pw-{resident.key}", "L3", client_id=client, person=person.key)
    return {"Authorization": f"Bearer {token}"}


def _operator(journey: Journey, credit_code: str, operator: str = "pw-op-1") -> dict[str, str]:
    enterprise = _keys(journey).enterprise(credit_code)
    token = journey.issuer.issue(
        f"pw-ent-{credit_code[-4:]}",
        "LP",
        client_id="demo-portal-qinghai",
        actor=operator,
        actor_role="agent",
        enterprise=enterprise.key,
    )
    return {"Authorization": f"Bearer {token}"}


def _later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def _consent(**changes: Any) -> dict[str, Any]:
    return {
        "requester": {"client": BANK, "province": "61"},
        "services": [SERVICE],
        "operations": ["account-query"],
        "purpose": "住房公积金异地转移接续",
        "expires_at": _later(days=30),
        **changes,
    }


async def _send(
    journey: Journey, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, dict[str, Any]]:
    response = await journey.client.request(method, path, json=body, headers=headers)
    assert "no-store" in response.headers.get("Cache-Control", "") or response.status >= 400
    return response.status, await response.json(content_type=None)


async def _trail(journey: Journey) -> list[AuditRecord]:
    state = journey.client.app[STATE]
    assert state.audit is not None
    assert state.audit_store is not None
    await state.audit.flush()
    records: list[AuditRecord] = []
    async for page in state.audit_store.read_pages(state.audit.chain, 1):
        records.extend(AuditRecord.from_stored(r.text, r.hash) for r in page)
    return records


async def test_a_person_grants_lists_and_revokes(journey: Journey) -> None:
    me = _person(journey, MA_WENHUA)
    status, empty = await _send(journey, "GET", "/api/v1/me/consents", me)
    assert (status, empty) == (200, {"consents": []})

    status, grant = await _send(journey, "POST", "/api/v1/me/consents", me, _consent(max_uses=2))
    assert status == 201, grant
    assert grant["kind"] == "consent"
    assert grant["state"] == "active"
    assert grant["requester"] == {"client": BANK, "province": "61"}
    assert (grant["max_uses"], grant["uses"]) == (2, 0)
    subject = _keys(journey).person(MA_WENHUA.id_number)
    assert grant["subject"] == _digest(journey).display(subject)
    assert subject.key not in str(grant), "the key itself is never shown"

    doc = await (await journey.client.get("/openapi.json")).json()
    schema = Draft202012Validator({**doc, "$ref": "#/components/schemas/Grant"})
    assert not list(schema.iter_errors(grant))
    assert {"/api/v1/me/consents", "/api/v1/me/consents/{grant_id}"} <= set(doc["paths"])

    # The book the data-subject rule asks: the bank's portal, for her, for this purpose.
    book = journey.client.app[STATE].consent
    assert book is not None
    ask = GrantAsk(
        grant["id"], subject, Requester(BANK, province="61"), SERVICE, "account-query",
        "住房公积金异地转移接续",
    )  # fmt: skip
    assert (await book.use(ask)).uses_left == 1
    # What the data-subject rule is handed when the app is built: the same book, once open.
    rule_book: ConsentBook = AppConsentBook(journey.client.app[STATE])
    assert (await rule_book.use(ask)).uses_left == 0
    status, listed = await _send(journey, "GET", "/api/v1/me/consents", me)
    assert [(g["id"], g["uses"]) for g in listed["consents"]] == [(grant["id"], 2)]

    # Someone else cannot see or revoke it; she can, and the next use is refused at once.
    other = _person(journey, SU_LANXIN)
    status, theirs = await _send(journey, "GET", "/api/v1/me/consents", other)
    assert (status, theirs) == (200, {"consents": []})
    status, body = await _send(journey, "DELETE", f"/api/v1/me/consents/{grant['id']}", other)
    assert (status, body["code"]) == (404, "client.not_found")
    status, revoked = await _send(journey, "DELETE", f"/api/v1/me/consents/{grant['id']}", me)
    assert (status, revoked["state"]) == (200, "revoked")
    with pytest.raises(GrantRefused) as refused:
        await book.use(ask)
    assert refused.value.code == "client.grant_revoked"

    trail = await _trail(journey)
    mine = [r.event for r in trail if subject.key in r.event.extra.get("subjects", [])]
    assert [e.type for e in mine] == [
        EventType.CONSENT_GRANTED,
        EventType.CONSENT_USED,
        EventType.CONSENT_USED,
        EventType.CONSENT_REVOKED,
        EventType.CONSENT_REFUSED,
    ]
    assert {e.extra["grant"] for e in mine} == {grant["id"]}
    assert mine[-1].error_code == "client.grant_revoked"
    assert MA_WENHUA.id_number not in str([r.text for r in trail])


async def test_bad_requests_are_problems(journey: Journey) -> None:
    me = _person(journey, MA_WENHUA)
    for body, path in (
        (_consent(services=["no-such-service"]), "/services/0"),
        (_consent(operations=["no-such-operation"]), "/operations/0"),
        (_consent(requester={"client": "no-such-client"}), "/requester/client"),
        (_consent(requester={"client": BANK, "province": "99"}), "/requester/province"),
        (_consent(expires_at=_later(days=-1)), "/expires_at"),
        (_consent(expires_at=_later(days=400)), "/expires_at"),
        (_consent(expires_at="tomorrow"), "/expires_at"),
        (_consent(expires_at="2030-01-01T00:00:00"), "/expires_at"),
        (_consent(max_uses=0), "/max_uses"),
        (_consent(purpose=""), "/purpose"),
        (_consent(extra="x"), "/"),
        ({k: v for k, v in _consent().items() if k != "purpose"}, "/"),
    ):
        status, problem = await _send(journey, "POST", "/api/v1/me/consents", me, body)
        assert (status, problem["code"]) == (422, "client.validation_failed"), (body, problem)
        assert path in [e["path"] for e in problem["errors"]], problem
    response = await journey.client.post(
        "/api/v1/me/consents", data=b"{not json", headers={**me, "Content-Type": "application/json"}
    )
    assert (response.status, (await response.json())["code"]) == (400, "client.malformed_json")
    response = await journey.client.post("/api/v1/me/consents", data=b"x", headers=me)
    assert response.status == 415
    status, problem = await _send(journey, "GET", "/api/v1/me/consents", {})
    assert (status, problem["code"]) == (401, "client.unauthenticated")

    # A clerk acting for someone, or a machine client, has no grants of its own to manage.
    clerk = journey.issuer.issue(
        "pw-x", "Counter", client_id="demo-window-shaanxi", actor="clerk", actor_role="clerk",
        person="pk-x",
    )  # fmt: skip
    machine = journey.issuer.issue("bank-system", "none", client_id="bank-system")
    for token in (clerk, machine):
        status, problem = await _send(
            journey, "GET", "/api/v1/me/consents", {"Authorization": f"Bearer {token}"}
        )
        assert (status, problem["code"]) == (403, "client.forbidden")
        assert "Traceback" not in str(problem)
    status, problem = await _send(journey, "DELETE", "/api/v1/me/consents/cg_nothing", me)
    assert (status, problem["code"]) == (404, "client.not_found")
    # Nothing of the refused requests was recorded as a grant.
    assert not [e for e in await _trail(journey) if e.event.type == EventType.CONSENT_GRANTED]


async def test_an_operator_grants_only_for_its_own_enterprise(journey: Journey) -> None:
    own, other = QINLING_TECH.credit_code, TESTING_CENTRE.credit_code
    operator = _operator(journey, own)
    status, grant = await _send(
        journey, "POST", "/api/v1/me/consents", operator, _consent(enterprise=own)
    )
    assert status == 201, grant
    assert grant["granted_by"] == "operator"
    status, problem = await _send(
        journey, "POST", "/api/v1/me/consents", operator, _consent(enterprise=other)
    )
    assert (status, problem["code"]) == (403, "client.not_your_enterprise")

    # Another operator of the same enterprise sees and may revoke it; another enterprise's not.
    colleague = _operator(journey, own, operator="pw-op-2")
    status, listed = await _send(journey, "GET", "/api/v1/me/consents", colleague)
    assert [g["id"] for g in listed["consents"]] == [grant["id"]]
    stranger = _operator(journey, other)
    status, problem = await _send(journey, "DELETE", f"/api/v1/me/consents/{grant['id']}", stranger)
    assert status == 404
    status, revoked = await _send(
        journey, "DELETE", f"/api/v1/me/consents/{grant['id']}", colleague
    )
    assert revoked["state"] == "revoked"
    granted = [e.event for e in await _trail(journey) if e.event.type == EventType.CONSENT_GRANTED]
    assert [e.actor for e in granted] == ["pw-op-1"]
    assert granted[0].extra["granted_by"] == "operator"


async def test_an_agent_acts_until_the_delegation_is_revoked(journey: Journey) -> None:
    holder, agent = _person(journey, MA_WENHUA), _person(journey, SU_LANXIN, "demo-portal-shaanxi")
    body = {
        "agent": {"id_type": "111", "id_number": SU_LANXIN.id_number},
        "services": [SERVICE],
        "expires_at": _later(days=7),
    }
    status, delegation = await _send(journey, "POST", "/api/v1/me/delegations", holder, body)
    assert status == 201, delegation
    assert delegation["id"].startswith("dg_")
    assert delegation["agent"]
    assert SU_LANXIN.id_number not in str(delegation)
    status, listed = await _send(journey, "GET", "/api/v1/me/delegations", agent)
    assert [d["id"] for d in listed["received"]] == [delegation["id"]]
    assert listed["given"] == []

    bad = {**body, "agent": {"id_type": "111", "id_number": "610102199802030460"}}
    status, problem = await _send(journey, "POST", "/api/v1/me/delegations", holder, bad)
    assert (status, problem["errors"][0]["path"]) == (422, "/agent/id_number")
    own = {**body, "agent": {"id_type": "111", "id_number": MA_WENHUA.id_number}}
    status, problem = await _send(journey, "POST", "/api/v1/me/delegations", holder, own)
    assert status == 422

    # The agent's own login presents the delegation; the book accepts it for her only.
    keys, book = _keys(journey), journey.client.app[STATE].consent
    assert book is not None
    subject = keys.person(MA_WENHUA.id_number)
    as_agent = Requester("demo-portal-shaanxi", person=keys.person(SU_LANXIN.id_number))
    ask = GrantAsk(delegation["id"], subject, as_agent, SERVICE, "account-query", "转移接续")
    assert (await book.use(ask)).kind == "delegation"

    # Under the delegation the agent grants the bank consent for the holder.
    status, given = await _send(
        journey,
        "POST",
        "/api/v1/me/consents",
        agent,
        _consent(delegation=delegation["id"], requester={"client": BANK}),
    )
    assert status == 201, given
    assert given["granted_by"] == "agent"
    assert given["delegation"] == delegation["id"]
    status, theirs = await _send(journey, "GET", "/api/v1/me/consents", holder)
    assert given["id"] in [g["id"] for g in theirs["consents"]], "the holder sees it"

    status, revoked = await _send(
        journey, "DELETE", f"/api/v1/me/delegations/{delegation['id']}", holder
    )
    assert revoked["state"] == "revoked"
    bank = GrantAsk(
        given["id"], subject, Requester(BANK), SERVICE, "account-query", "住房公积金异地转移接续"
    )
    for stale, code in ((ask, "client.grant_revoked"), (bank, "client.grant_delegation_ended")):
        with pytest.raises(GrantRefused) as refused:
            await book.use(stale)
        assert refused.value.code == code
    status, problem = await _send(
        journey, "POST", "/api/v1/me/consents", agent, _consent(delegation=delegation["id"])
    )
    assert (status, problem["code"]) == (403, "client.grant_delegation_ended")


async def test_the_store_down_is_a_503_naming_it(journey: Journey) -> None:
    me = _person(journey, MA_WENHUA)
    book = journey.client.app[STATE].consent
    assert book is not None
    await book.store.aclose()
    status, problem = await _send(journey, "GET", "/api/v1/me/consents", me)
    assert (status, problem["code"]) == (503, "gateway.consent_store_unavailable")
    assert "consent store" in problem["detail"]
    assert "sqlite" in problem["detail"]
    response = await journey.client.get("/readyz")
    assert response.status == 503
    await book.store.open()  # the journey's end reads the trail, not this store


async def test_the_access_log_shows_who_touched_my_data(journey: Journey) -> None:
    me, keys = _person(journey, MA_WENHUA), _keys(journey)
    subject = keys.person(MA_WENHUA.id_number)
    status, grant = await _send(journey, "POST", "/api/v1/me/consents", me, _consent())
    assert status == 201
    state = journey.client.app[STATE]
    assert state.consent is not None
    assert state.audit is not None
    purpose = "住房公积金异地转移接续"
    bank = Requester(BANK, province="61")
    await state.consent.use(GrantAsk(grant["id"], subject, bank, SERVICE, "account-query", purpose))
    refused = GrantAsk(grant["id"], subject, bank, SERVICE, "account-query", "营销")
    with pytest.raises(GrantRefused):
        await state.consent.use(refused)
    # The call the institution then made, as the data-subject rule records it.
    await state.audit.append(
        AuditEvent(
            type=EventType.SERVICE_CALL_COMPLETED,
            principal="bank-pairwise",
            client=BANK,
            service=SERVICE,
            operation="account-query",
            receiving_province="61",
            handling_province="61",
            system="shaanxi-hf",
            purpose=purpose,
            outcome="ok",
            extra={"subjects": [subject.key], "grant": grant["id"]},
        )
    )
    await state.audit.flush()

    status, log = await _send(journey, "GET", "/api/v1/me/access-log", me)
    assert status == 200, log
    kinds = [(e["kind"], e["client"], e["outcome"]) for e in log["entries"]]
    assert kinds == [
        ("service_call", BANK, "ok"),
        ("grant_refused", BANK, "denied"),
        ("grant_used", BANK, "ok"),
    ]
    assert {e["grant_id"] for e in log["entries"]} == {grant["id"]}
    assert {e["subject"] for e in log["entries"]} == {_digest(journey).display(subject)}
    assert log["entries"][1]["error_code"] == "client.grant_other_purpose"
    assert log["entries"][0]["receiving_province"]["code"] == "61"
    assert subject.key not in str(log)
    assert MA_WENHUA.id_number not in str(log)
    doc = await (await journey.client.get("/openapi.json")).json()
    schema = Draft202012Validator({**doc, "$ref": "#/components/schemas/AccessLog"})
    assert not list(schema.iter_errors(log))

    # Pages of one: the same entries, each once.
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        query = f"?limit=1&cursor={cursor}" if cursor else "?limit=1"
        status, page = await _send(journey, "GET", "/api/v1/me/access-log" + query, me)
        assert status == 200, page
        seen.extend((e["time"], e["kind"]) for e in page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [(e["time"], e["kind"]) for e in log["entries"]]

    status, theirs = await _send(
        journey, "GET", "/api/v1/me/access-log", _person(journey, SU_LANXIN)
    )
    assert (status, theirs["entries"]) == (200, [])


async def test_an_enterprise_s_operators_read_its_access_log(journey: Journey) -> None:
    own = QINLING_TECH.credit_code
    operator, colleague = _operator(journey, own), _operator(journey, own, "pw-op-2")
    status, grant = await _send(journey, "POST", "/api/v1/me/consents", operator, _consent())
    assert status == 201
    state = journey.client.app[STATE]
    assert state.consent is not None
    enterprise = _keys(journey).enterprise(own)
    await state.consent.use(
        GrantAsk(grant["id"], enterprise, Requester(BANK, province="61"), SERVICE,
                 "account-query", "住房公积金异地转移接续")
    )  # fmt: skip
    # A use is a buffered record: it joins the next group commit, a moment later.
    for _ in range(100):
        status, log = await _send(journey, "GET", "/api/v1/me/access-log", colleague)
        assert status == 200, log
        if log["entries"]:
            break
        await asyncio.sleep(0.02)
    assert [(e["kind"], e["grant_id"]) for e in log["entries"]] == [("grant_used", grant["id"])]
    status, other = await _send(
        journey, "GET", "/api/v1/me/access-log", _operator(journey, TESTING_CENTRE.credit_code)
    )
    assert other["entries"] == []
