"""The audit trail of routed calls: two records per call, fail-closed for required services."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.audit.record import AuditRecord
from gateway.demo.backends import SHAANXI_DEGREE, SHAANXI_SI
from gateway.demo.residents import MA_WENHUA, SU_LANXIN
from gateway.http.keys import STATE
from tests.flows.conftest import Journey

S1_HISTORY: dict[str, Any] = {
    "operation": "contribution-history",
    "receiving_province": "63",
    "handling_province": "61",
    "purpose": "企业职工养老保险关系转移接续",
    "data": {
        "id_number": MA_WENHUA.id_number,
        "name": MA_WENHUA.name,
        "insurance_number": "6101002010000123",
    },
}
S6_VERIFY: dict[str, Any] = {
    "operation": "verify",
    "receiving_province": "63",
    "handling_province": "61",
    "purpose": "用人单位招聘学历核验",
    "authorisation_ref": "AUTH-2026-0009",
    "data": {
        "name": SU_LANXIN.name,
        "id_number": SU_LANXIN.id_number,
        "certificate_number": "106971202005123456",
    },
}


async def _records(journey: Journey) -> list[AuditRecord]:
    state = journey.client.app[STATE]
    assert state.audit is not None
    assert state.audit_store is not None
    await state.audit.flush()
    records: list[AuditRecord] = []
    async for page in state.audit_store.read_pages(state.audit.chain, 1):
        records.extend(AuditRecord.from_stored(r.text, r.hash) for r in page)
    return records


async def test_each_call_leaves_a_request_and_an_outcome_record(journey: Journey) -> None:
    status, body = await journey.call("pension-transfer", S1_HISTORY)
    assert status == 200, body
    records = [r for r in await _records(journey) if r.event.request_id == body["request_id"]]
    assert [r.event.type.value for r in records] == [
        "service_call_requested",
        "service_call_completed",
    ]
    done = records[1].event
    assert done.principal == journey.tokens["citizen-l3"]["subject"]
    assert done.identity_level == "L3"
    assert done.client == "demo-portal-qinghai"
    assert (done.service, done.system) == ("pension-transfer", "shaanxi-si")
    assert (done.receiving_province, done.handling_province) == ("63", "61")
    assert done.outcome == "ok"
    assert done.attempts == 1
    assert done.request_digest is not None
    assert done.request_digest.startswith("sha256:")
    assert done.response_digest is not None
    text = " ".join(r.text for r in records)
    assert MA_WENHUA.id_number not in text, "用而不存: the trail keeps digests, not payloads"
    assert MA_WENHUA.name not in text


async def test_required_audit_fails_closed_and_buffered_proceeds(journey: Journey) -> None:
    state = journey.client.app[STATE]
    assert state.audit_store is not None
    await state.audit_store.aclose()  # the audit store goes away under the running gateway

    status, body = await journey.call("pension-transfer", S1_HISTORY)
    assert status == 503, body
    assert body["code"] == "gateway.audit_unavailable"
    assert journey.backends.recorder(SHAANXI_SI).count == 0, "no audit, no call"

    status, body = await journey.call("degree-verification", S6_VERIFY, token="citizen-l2")
    assert status == 200, body
    assert journey.backends.recorder(SHAANXI_DEGREE).count == 1

    await state.audit_store.open()  # back: the writer recovers and the buffered records follow
    assert state.audit is not None
    for _ in range(200):
        if state.audit.readiness().ready:
            break
        await asyncio.sleep(0.05)
    records = await _records(journey)
    types = [r.event.type.value for r in records if r.event.service == "degree-verification"]
    assert types == ["service_call_requested", "service_call_completed"]
