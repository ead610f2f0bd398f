"""Reading the trail over HTTP: GET /admin/audit for auditors, the citizen's access log, and the
admin_action records every /admin request leaves."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.audit.query import AuditQuery
from gateway.audit.record import AuditRecord, EventType
from gateway.audit.setup import AUDIT_DB_NAME
from gateway.demo.residents import MA_WENHUA
from gateway.http.keys import STATE
from tests.flows.conftest import Journey, audit_verify, demo_journey
from tests.flows.test_audit_journey import S1_HISTORY, S6_VERIFY
from tests.stores.backends import SqliteBackend

AUDITOR = "staff-auditor-01"
CLERK = "clerk-qh-0007"


def _auditor(journey: Journey, *roles: str) -> dict[str, str]:
    token = journey.issuer.issue(
        AUDITOR, "L3", client_id="admin-console", roles=roles or ("auditor",)
    )
    return {"Authorization": f"Bearer {token}"}


async def _get(
    journey: Journey, path: str, headers: dict[str, str], **params: str
) -> tuple[int, dict[str, Any]]:
    response = await journey.client.get(path, params=params, headers=headers)
    return response.status, await response.json(content_type=None)


def _schema(doc: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator({**doc, "$ref": f"#/components/schemas/{name}"})


async def _trail(journey: Journey) -> list[AuditRecord]:
    state = journey.client.app[STATE]
    assert state.audit is not None
    assert state.audit_store is not None
    await state.audit.flush()
    records: list[AuditRecord] = []
    async for page in state.audit_store.read_pages(state.audit.chain, 1):
        records.extend(AuditRecord.from_stored(r.text, r.hash) for r in page)
    return records


async def test_auditor_filters_and_pages_through_the_trail(journey: Journey) -> None:
    me = journey.tokens["citizen-l3"]["subject"]
    for _ in range(3):
        status, body = await journey.call("pension-transfer", S1_HISTORY)
        assert status == 200, body
    status, body = await journey.call("degree-verification", S6_VERIFY, token="citizen-l2")
    assert status == 200, body
    await _trail(journey)  # flushed: the records are in the store

    auditor = _auditor(journey)
    status, page = await _get(
        journey, "/admin/audit", auditor, principal=me, service="pension-transfer", limit="100"
    )
    assert status == 200, page
    assert [r["type"] for r in page["records"]] == [
        "service_call_completed",
        "service_call_requested",
    ] * 3, "newest first, each call's outcome after its request"
    assert all(r["principal"] == me and r["hash"] for r in page["records"])
    assert page["next_cursor"] is None

    # Keyset pages of two: the same six records, each once, in the same order.
    seen: list[tuple[str, int]] = []
    cursor: str | None = None
    while True:
        params = {"principal": me, "service": "pension-transfer", "limit": "2"}
        if cursor:
            params["cursor"] = cursor
        status, part = await _get(journey, "/admin/audit", auditor, **params)
        assert status == 200, part
        seen.extend((r["chain"], r["sequence"]) for r in part["records"])
        cursor = part["next_cursor"]
        if cursor is None:
            break
    assert seen == [(r["chain"], r["sequence"]) for r in page["records"]]

    # Other filters: province (receiving or handling), event type, time window, order.
    status, shaanxi = await _get(
        journey, "/admin/audit", auditor, province="61", type="service_call_completed"
    )
    assert status == 200
    assert {r["service"] for r in shaanxi["records"]} == {"pension-transfer", "degree-verification"}
    first = page["records"][-1]["time"]
    status, window = await _get(
        journey, "/admin/audit", auditor, since=first, order="asc", type="service_call_requested"
    )
    assert status == 200
    assert window["records"][0]["time"] == first
    times = [r["time"] for r in window["records"]]
    assert times == sorted(times)
    status, config = await _get(journey, "/admin/audit", auditor, type="config_loaded")
    assert [r["type"] for r in config["records"]] == ["config_loaded"]

    doc = await (await journey.client.get("/openapi.json")).json()
    assert not list(_schema(doc, "AuditPage").iter_errors(page))
    assert "/admin/audit" in doc["paths"]
    assert MA_WENHUA.id_number not in str(page)


async def test_admin_audit_refuses_everyone_but_auditors(journey: Journey) -> None:
    status, body = await _get(journey, "/admin/audit", {})
    assert (status, body["code"]) == (401, "client.unauthenticated")
    for headers in (journey.auth("citizen-l3"), _auditor(journey, "operator", "clerk")):
        status, body = await _get(journey, "/admin/audit", headers)
        assert (status, body["code"]) == (403, "client.forbidden"), body
        assert body["type"]
        assert "Traceback" not in str(body)


async def test_bad_filters_are_validation_problems(journey: Journey) -> None:
    auditor = _auditor(journey)
    for params, path in (
        ({"province": "6"}, "/province"),
        ({"province": "99"}, "/province"),
        ({"since": "yesterday"}, "/since"),
        ({"since": "2026-01-01T00:00:00"}, "/since"),
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "/until"),
        ({"limit": "0"}, "/limit"),
        ({"limit": "501"}, "/limit"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "/cursor"),
        ({"type": "login,nonsense"}, "/type"),
        ({"order": "sideways"}, "/order"),
        ({"principal": "x" * 200}, "/principal"),
        ({"principal; DROP TABLE audit_records": "1"}, "/principal; DROP TABLE audit_records"),
    ):
        status, body = await _get(journey, "/admin/audit", auditor, **params)
        assert (status, body["code"]) == (422, "client.validation_failed"), (params, body)
        assert path in [e["path"] for e in body["errors"]], (params, body)
    # A cursor of the other order is refused too: it would skip or repeat records.
    status, _ = await journey.call("pension-transfer", S1_HISTORY)
    status, page = await _get(journey, "/admin/audit", auditor, limit="1")
    assert page["next_cursor"]
    status, body = await _get(
        journey, "/admin/audit", auditor, cursor=page["next_cursor"], order="asc"
    )
    assert (status, body["code"]) == (422, "client.validation_failed")


async def test_every_admin_request_leaves_an_admin_action_record(journey: Journey) -> None:
    await _get(journey, "/admin/audit", _auditor(journey), principal="pw-someone")
    await _get(journey, "/admin/audit", journey.auth("citizen-l3"))
    status, _ = await _get(journey, "/admin/cases/dead-letters", _auditor(journey, "operator"))
    assert status == 200
    actions = [r.event for r in await _trail(journey) if r.event.type == "admin_action"]
    assert [(a.operation, a.outcome) for a in actions] == [
        ("GET /admin/audit", "ok"),
        ("GET /admin/audit", "denied"),
        ("GET /admin/cases/dead-letters", "ok"),
    ]
    assert actions[0].actor == AUDITOR
    assert actions[0].extra["query"] == {"principal": "pw-someone"}
    assert actions[1].actor == journey.tokens["citizen-l3"]["subject"]
    assert actions[1].error_code == "client.forbidden"


async def test_citizen_sees_who_touched_their_data(journey: Journey) -> None:
    me = journey.tokens["citizen-l3"]["subject"]
    status, body = await journey.call("pension-transfer", S1_HISTORY)
    assert status == 200, body
    # A window clerk acts for the same citizen (委托/窗口代办): the log names the clerk.
    clerk = journey.issuer.issue(
        me,
        "Counter",
        client_id="demo-window-qinghai",
        actor=CLERK,
        actor_role="clerk",
        roles=("clerk",),
        person=journey.keys.person(MA_WENHUA.id_number).key,  # the document the clerk checked
    )
    response = await journey.client.post(
        "/api/v1/services/pension-transfer/calls",
        json=S1_HISTORY,
        headers={"Authorization": f"Bearer {clerk}"},
    )
    assert response.status == 200, await response.text()
    # Someone else's call never shows up in this citizen's log.
    status, _ = await journey.call("degree-verification", S6_VERIFY, token="citizen-l2")
    assert status == 200
    await _trail(journey)  # degree-verification is audited buffered: let its records land

    status, log = await _get(journey, "/api/v1/me/access-log", journey.auth("citizen-l3"))
    assert status == 200, log
    entries = log["entries"]
    assert len(entries) == 2
    assert all(e["kind"] == "service_call" for e in entries)
    newest, oldest = entries
    assert newest["acted_by"] == CLERK
    assert oldest["acted_by"] is None
    assert oldest["service"] == "pension-transfer"
    assert oldest["service_name"]["zh"]
    assert oldest["receiving_province"] == {"code": "63", "name": "青海", "name_en": "Qinghai"}
    assert oldest["handling_provinces"] == [{"code": "61", "name": "陕西", "name_en": "Shaanxi"}]
    assert oldest["system"] == "shaanxi-si"
    assert oldest["system_name"]["zh"]
    assert oldest["purpose"] == "企业职工养老保险关系转移接续"
    assert oldest["outcome"] == "ok"
    assert newest["time"] > oldest["time"]
    doc = await (await journey.client.get("/openapi.json")).json()
    assert not list(_schema(doc, "AccessLog").iter_errors(log))
    assert MA_WENHUA.id_number not in str(log)

    status, part = await _get(
        journey, "/api/v1/me/access-log", journey.auth("citizen-l3"), limit="1"
    )
    assert len(part["entries"]) == 1
    assert part["next_cursor"]
    status, rest = await _get(
        journey,
        "/api/v1/me/access-log",
        journey.auth("citizen-l3"),
        cursor=part["next_cursor"],
    )
    assert [e["time"] for e in part["entries"] + rest["entries"]] == [e["time"] for e in entries]

    # The other citizen sees only their own call; the clerk cannot read the citizen's log.
    status, other = await _get(journey, "/api/v1/me/access-log", journey.auth("citizen-l2"))
    assert [e["service"] for e in other["entries"]] == ["degree-verification"]
    status, body = await _get(
        journey, "/api/v1/me/access-log", {"Authorization": f"Bearer {clerk}"}
    )
    assert (status, body["code"]) == (403, "client.forbidden")
    status, body = await _get(journey, "/api/v1/me/access-log", {})
    assert status == 401
    status, body = await _get(
        journey, "/api/v1/me/access-log", journey.auth("citizen-l3"), principal="pw-other"
    )
    assert (status, body["code"]) == (422, "client.validation_failed")


async def test_a_tampered_lookup_table_is_reported_by_queries_and_by_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An intruder with database access deletes the lookup row of one of the citizen's records
    (the chain is untouched): the access log no longer finds it, and must say it may be
    incomplete; `tongban audit verify` names the record."""
    async with demo_journey(tmp_path, monkeypatch) as journey:
        for _ in range(2):
            status, body = await journey.call("pension-transfer", S1_HISTORY)
            assert status == 200, body
        trail = await _trail(journey)
        store = journey.client.app[STATE].audit_store
        assert store is not None
        await store.query(AuditQuery(limit=1))  # writes the lookup rows still pending
        me = journey.tokens["citizen-l3"]["subject"]
        victim = next(
            r
            for r in trail
            if r.event.type == EventType.SERVICE_CALL_COMPLETED and r.event.principal == me
        )
        await SqliteBackend(tmp_path / AUDIT_DB_NAME).tamper(
            [
                (
                    "DELETE FROM audit_index WHERE chain_id = ? AND sequence = ?",
                    (victim.chain, victim.sequence),
                )
            ]
        )
        status, log = await _get(journey, "/api/v1/me/access-log", journey.auth("citizen-l3"))
        assert status == 200, log
        assert len(log["entries"]) == 1
        assert log["integrity"]["derived_data"] == "damaged"
        status, page = await _get(journey, "/admin/audit", _auditor(journey), principal=me)
        assert page["integrity"]["derived_data"] == "damaged"
        doc = await (await journey.client.get("/openapi.json")).json()
        assert not list(_schema(doc, "AccessLog").iter_errors(log))
        assert not list(_schema(doc, "AuditPage").iter_errors(page))
    capsys.readouterr()
    assert await asyncio.to_thread(audit_verify, tmp_path) == 1
    out = capsys.readouterr().out
    assert f"record {victim.sequence}: lookup_missing" in out


async def test_a_record_planted_in_an_access_log_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An intruder adds a subject row that files a record which never touched the citizen's
    data under the citizen's key: the access log checks each record's own text and leaves it
    out, and `tongban audit verify` names the record."""
    async with demo_journey(tmp_path, monkeypatch) as journey:
        status, body = await journey.call("pension-transfer", S1_HISTORY)
        assert status == 200, body
        status, _ = await _get(journey, "/admin/audit", _auditor(journey))  # not about anyone
        assert status == 200
        trail = await _trail(journey)
        store = journey.client.app[STATE].audit_store
        assert store is not None
        await store.query(AuditQuery(limit=1))  # writes the lookup rows still pending
        mine = next(r for r in trail if r.event.type == EventType.SERVICE_CALL_COMPLETED)
        [key] = await _subject_keys(tmp_path / AUDIT_DB_NAME, mine.chain, mine.sequence)
        planted = next(
            r for r in trail if r.event.request_id and not (r.event.extra or {}).get("subjects")
        )
        await SqliteBackend(tmp_path / AUDIT_DB_NAME).tamper(
            [
                (
                    "INSERT INTO audit_subjects VALUES (?, ?, ?, ?)",
                    (key, planted.time, planted.chain, planted.sequence),
                )
            ]
        )
        status, log = await _get(journey, "/api/v1/me/access-log", journey.auth("citizen-l3"))
        assert status == 200, log
        shown = {entry["request_id"] for entry in log["entries"]}
        assert mine.event.request_id in shown
        assert planted.event.request_id not in shown
    capsys.readouterr()
    assert await asyncio.to_thread(audit_verify, tmp_path) == 1
    out = capsys.readouterr().out
    assert f"record {planted.sequence}: subjects_mismatch" in out


async def _subject_keys(path: Path, chain: str, sequence: int) -> list[str]:
    def read() -> list[str]:
        with closing(sqlite3.connect(path)) as conn:
            rows = conn.execute(
                "SELECT subject FROM audit_subjects WHERE chain_id = ? AND sequence = ?",
                (chain, sequence),
            ).fetchall()
        return [str(row[0]) for row in rows]

    return await asyncio.to_thread(read)


async def test_time_and_cursor_parameters_follow_their_schema(journey: Journey) -> None:
    auditor = _auditor(journey)
    doc = await (await journey.client.get("/openapi.json")).json()
    params = {p["name"]: p["schema"] for p in doc["paths"]["/admin/audit"]["get"]["parameters"]}
    assert params["since"]["format"] == "date-time"
    assert params["cursor"]["minLength"] == 1
    # RFC 3339 also allows a lower-case t and z, and a leap second.
    for since in ("2026-01-01t00:00:00z", "2016-12-31T23:59:60Z", "2026-01-01T08:00:00+08:00"):
        status, body = await _get(journey, "/admin/audit", auditor, since=since)
        assert status == 200, (since, body)
    # Empty values are outside the schema (minLength 1), and refused as such.
    for name in ("since", "cursor"):
        status, body = await _get(journey, "/admin/audit", auditor, **{name: ""})
        assert (status, body["code"]) == (422, "client.validation_failed"), name
