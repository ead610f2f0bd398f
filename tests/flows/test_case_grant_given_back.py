"""A counted grant is spent only by an application that was taken in, over real HTTP.

On the demo gateway with the consent book the app opens itself (SQLite): 马文华 gives the Shaanxi
portal one application of 出生一件事 for him, and 韩雪梅, signed in there, applies under it (S12:
his newborn's registration, his birth certificate verified at the Shaanxi licence system). When
the application is then not taken in (the case store failing before its commit, the intake
record failing closed, the licence issuer's circuit open), the single use is given back and the
grant still takes exactly one application in afterwards. A case whose commit may have landed
keeps the use spent, and a retry with the same key finds that case without spending anything.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.audit.record import AuditEvent, EventType
from gateway.cases.audit import CaseAudit
from gateway.cases.model import NewCase
from gateway.cases.store import CaseStoreUnavailable, CommitUnknown, CreateResult
from gateway.demo.backends import SHAANXI_LICENCE
from gateway.demo.cases import S12_CASE
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA
from gateway.errors import AuditUnavailable
from gateway.http.cases import CASES
from tests.flows.conftest import Journey, consent_trail, grant_uses, open_circuit

PORTAL = "demo-portal-shaanxi"


def bearer(journey: Journey, subject: str, id_number: str) -> dict[str, str]:
    token = journey.issuer.issue(
        subject, "L3", client_id=PORTAL, person=journey.keys.person(id_number).key
    )
    return {"Authorization": f"Bearer {token}"}


async def single_use_grant(journey: Journey) -> str:
    """马文华 lets the Shaanxi portal apply once for him (出生一件事)."""
    response = await journey.client.post(
        "/api/v1/me/consents",
        json={
            "requester": {"client": PORTAL},
            "services": ["newborn-bundle"],
            "purpose": "出生一件事",
            "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "max_uses": 1,
        },
        headers=bearer(journey, "demo-ma", MA_WENHUA.id_number),
    )
    grant = await response.json()
    assert response.status == 201, grant
    return str(grant["id"])


async def apply(journey: Journey, grant: str, key: str) -> tuple[int, dict[str, Any]]:
    """韩雪梅, at the Shaanxi portal, applies for his newborn under his grant."""
    body = {**copy.deepcopy(S12_CASE[3]), "consent": grant}
    response = await journey.client.post(
        "/api/v1/cases",
        json=body,
        headers={**bearer(journey, "demo-han", HAN_XUEMEI.id_number), "Idempotency-Key": key},
    )
    return response.status, await response.json(content_type=None)


async def exactly_one_more(journey: Journey, grant: str, retry_key: str) -> str:
    """The retry takes the application in under the grant; a new application is refused."""
    status, receipt = await apply(journey, grant, retry_key)
    assert status == 202, receipt
    assert await grant_uses(journey, grant) == 1
    status, problem = await apply(journey, grant, "s12-granted-other")
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem
    return str(receipt["case_id"])


async def test_the_case_store_failing_gives_the_single_use_back(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await single_use_grant(journey)
    store = journey.client.app[CASES].store

    async def down(*args: Any, **kwargs: Any) -> CreateResult:
        raise CaseStoreUnavailable("OperationalError")  # before anything was committed

    with monkeypatch.context() as patch:
        patch.setattr(store, "create", down)
        status, problem = await apply(journey, grant, "s12-granted-0001")
    assert (status, problem["code"]) == (503, "gateway.case_store_unavailable"), problem
    assert await grant_uses(journey, grant) == 0, "no case: the use is back"

    await exactly_one_more(journey, grant, "s12-granted-0001")
    assert [t for t, _ in await consent_trail(journey, grant)] == [
        EventType.CONSENT_GRANTED,
        EventType.CONSENT_USED,
        EventType.CONSENT_RETURNED,
        EventType.CONSENT_USED,
        EventType.CONSENT_REFUSED,
    ]


async def test_a_commit_whose_answer_was_lost_keeps_the_use_spent(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await single_use_grant(journey)
    store = journey.client.app[CASES].store
    create = store.create

    async def lost(case: NewCase, **kwargs: Any) -> CreateResult:
        await create(case, **kwargs)  # it committed; its answer never came back
        raise CommitUnknown("ConnectionDoesNotExistError")

    with monkeypatch.context() as patch:
        patch.setattr(store, "create", lost)
        status, problem = await apply(journey, grant, "s12-granted-0002")
    assert (status, problem["code"]) == (503, "gateway.case_store_unavailable"), problem
    assert await grant_uses(journey, grant) == 1, "the case may exist: the use stays spent"

    # The client retries with the same key: the case it made, no use spent for it again.
    status, receipt = await apply(journey, grant, "s12-granted-0002")
    assert status == 202, receipt
    status, problem = await apply(journey, grant, "s12-granted-other")
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem
    assert EventType.CONSENT_RETURNED not in [t for t, _ in await consent_trail(journey, grant)]


class FailingIntake:
    """The case audit with the intake record (required) failing closed."""

    def __init__(self, audit: CaseAudit) -> None:
        self._audit = audit

    async def record(self, event: AuditEvent, *, required: bool) -> None:
        if required:
            raise AuditUnavailable("The audit trail cannot be written.")
        await self._audit.record(event, required=required)


async def test_the_intake_record_failing_closed_gives_the_single_use_back(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await single_use_grant(journey)
    service = journey.client.app[CASES].service
    audit = service._audit
    assert audit is not None
    with monkeypatch.context() as patch:
        patch.setattr(service, "_audit", FailingIntake(audit))
        status, problem = await apply(journey, grant, "s12-granted-0003")
    assert (status, problem["code"]) == (503, "gateway.audit_unavailable"), problem
    assert await grant_uses(journey, grant) == 0

    await exactly_one_more(journey, grant, "s12-granted-0003")


async def test_the_licence_issuer_out_of_reach_gives_the_single_use_back(
    journey: Journey,
) -> None:
    grant = await single_use_grant(journey)
    issuer = journey.backends.licence_systems[SHAANXI_LICENCE]
    breaker = open_circuit(journey, SHAANXI_LICENCE)

    status, problem = await apply(journey, grant, "s12-granted-0004")
    assert (status, problem["code"]) == (503, "backend.licence_issuer_unavailable"), problem
    assert issuer.recorder.requests == []
    assert await grant_uses(journey, grant) == 0

    breaker.record_success()  # the licence system is back
    await exactly_one_more(journey, grant, "s12-granted-0004")
    assert [r.operation for r in issuer.recorder.requests] == [
        "search_licences",
        "get_licence",
        "verify_licence",
    ]
