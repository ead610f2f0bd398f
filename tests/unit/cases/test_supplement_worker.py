"""补齐补正 end to end in the case core, on both stores: a back-end asks for material, the
applicant supplies it through the service, the worker sends it under the extended key with the
first delivery's retry, dead-letter and outcome-unknown rules, and the case goes on."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.record import EventType
from gateway.cases.audit import MemoryCaseAudit
from gateway.cases.config import DeliverySettings
from gateway.cases.model import Case, CaseStatus, PartStatus, supplement_key
from gateway.cases.service import CaseService
from gateway.cases.store import CaseStore, EntryKind
from gateway.cases.worker import DeliveryWorker
from gateway.errors import BackendRejected, BackendTimeout, GatewayError
from gateway.principal import Principal
from tests.unit.cases.catalog_fixtures import FakeClock, FakeProvince, build_catalog, unavailable

CITIZEN = Principal("citizen-a", "L3", "portal-63")
OTHER = Principal("citizen-b", "L3", "portal-63")
OPERATOR = Principal("ops-1", "L3", "admin", roles=frozenset({"operator"}))
MATERIALS = [{"code": "id-card", "ref": "urn:elicence:1", "digest": "sha256:" + "b" * 64}]
PHOTO = {"code": "photo", "ref": "urn:upload:photo-2", "digest": "sha256:" + "d" * 64}
ASKS = {
    "materials": ["photo"],
    "message": "照片不清晰 / unreadable photo",
    "deadline": "2026-12-10",
}


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send(self, event: Any) -> None:
        self.events.append(dict(event))

    async def aclose(self) -> None:
        return None


@dataclass
class Rig:
    store: CaseStore
    service: CaseService
    worker: DeliveryWorker
    fakes: dict[str, FakeProvince]
    clock: FakeClock
    sink: Sink
    audit: MemoryCaseAudit

    async def submit(self, operation: str = "apply", key: str = "key-00000001") -> str:
        body = {
            "service": "filing",
            "operation": operation,
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "test",
            "data": {"n": 1},
            "materials": MATERIALS,
        }
        return (await self.service.submit(CITIZEN, body, idempotency_key=key)).case.case_id

    async def supply(
        self, case_id: str, key: str = "supp-00000001", who: Principal = CITIZEN, **body: Any
    ) -> tuple[Case, bool]:
        taken = await self.service.supplement(
            who, case_id, {"materials": [PHOTO], **body}, idempotency_key=key
        )
        return taken.case, taken.created

    async def run(self, *, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        await self.worker.drain()

    async def case(self, case_id: str) -> Case:
        case = await self.store.get(case_id)
        assert case is not None
        return case


@pytest.fixture
async def rig(store: CaseStore, tmp_path: Path) -> Rig:
    catalog, fakes = build_catalog(tmp_path)
    for fake in fakes.values():
        fake.answer = "SUP"
        fake.asks = dict(ASKS)
    clock = FakeClock()
    sink = Sink()
    audit = MemoryCaseAudit()
    settings = DeliverySettings(
        max_attempts=3, initial_backoff=10, max_backoff=100, jitter=0, status_poll_interval=60
    )
    worker = DeliveryWorker(
        store,
        lambda: catalog,
        settings,
        events=sink,
        audit=audit,
        clock=clock,
        rng=random.Random(1),
    )
    service = CaseService(
        store, lambda: catalog, audit=audit, clock=clock, callback_keys={"sys-61": b"k" * 32}
    )
    return Rig(store, service, worker, fakes, clock, sink, audit)


async def test_asked_supplied_sent_once_and_done(rig: Rig) -> None:
    case_id = await rig.submit()
    await rig.run()
    case = await rig.case(case_id)
    assert case.status == CaseStatus.SUPPLEMENT_REQUESTED
    asked = case.parts[0].supplement
    assert asked is not None
    assert (asked.materials, asked.message, asked.deadline) == (
        ("photo",),
        ASKS["message"],
        "2026-12-10",
    )

    case, created = await rig.supply(case_id, note="新照片")
    assert created
    assert case.status == CaseStatus.RECEIVED
    again, created = await rig.supply(case_id, note="新照片")  # a client retry: same answer
    assert not created
    assert again.supplements == case.supplements
    await rig.run()

    fake = rig.fakes["61"]
    (sent,) = fake.supplement_sends
    assert sent.operation == "supplement"
    assert sent.context.idempotency_key == supplement_key(case_id, 0, 1)
    assert sent.context.case_id == case_id
    assert sent.payload == {"ref": "R61-1", "sequence": 1, "materials": [PHOTO], "note": "新照片"}
    case = await rig.case(case_id)
    assert (case.status, case.parts[0].status) == (CaseStatus.PROCESSING, PartStatus.PROCESSING)

    fake.submissions[next(iter(fake.submissions))]["status"] = "DONE"
    await rig.run(seconds=61)
    case = await rig.case(case_id)
    assert case.status == CaseStatus.CLOSED
    assert [t.to_status for t in case.transitions] == [
        CaseStatus.RECEIVED,
        CaseStatus.SUPPLEMENT_REQUESTED,
        CaseStatus.RECEIVED,
        CaseStatus.FORWARDED,
        CaseStatus.PROCESSING,
        CaseStatus.RESULT_DELIVERED,
        CaseStatus.CLOSED,
    ]
    assert len(fake.supplement_sends) == 1
    types = [e["type"] for e in rig.sink.events]
    assert "case_supplement_requested" in types
    assert "case_supplement_received" in types
    audited = [
        (e.outcome, e.actor)
        for e in rig.audit.events
        if e.type == EventType.CASE_TRANSITION and e.case_id == case_id
    ]
    assert ("received", "citizen-a") in audited[1:], "the supplement's transition is audited"


async def test_back_end_down_then_up_gets_the_supplement_once(rig: Rig) -> None:
    case_id = await rig.submit()
    await rig.run()
    rig.fakes["61"].fail_next = [unavailable()]
    await rig.supply(case_id)
    await rig.run()
    assert (await rig.case(case_id)).parts[0].status == PartStatus.PENDING
    entry = next(e for e in await rig.store.entries(case_id) if e.kind == EntryKind.SUPPLEMENT)
    assert (entry.state, entry.attempts, entry.last_error) == ("pending", 1, "backend.unavailable")
    await rig.run(seconds=11)
    case = await rig.case(case_id)
    assert case.parts[0].status == PartStatus.PROCESSING
    keys = [c.context.idempotency_key for c in rig.fakes["61"].supplement_sends]
    assert keys == [supplement_key(case_id, 0, 1)] * 2
    assert len(rig.fakes["61"].supplements) == 1


async def test_exhausted_sends_dead_letter_and_a_replay_resends(rig: Rig) -> None:
    case_id = await rig.submit()
    await rig.run()
    rig.fakes["61"].fail_next = [unavailable() for _ in range(3)]
    await rig.supply(case_id)
    for _ in range(3):
        await rig.run(seconds=101)
    case = await rig.case(case_id)
    assert (case.status, case.parts[0].status) == (
        CaseStatus.DEAD_LETTERED,
        PartStatus.DEAD_LETTERED,
    )
    (letter,) = await rig.store.dead_letters()
    assert (letter.kind, letter.last_error) == (EntryKind.SUPPLEMENT, "backend.unavailable")
    replayed = await rig.service.replay(case_id, operator="ops-1")
    assert replayed.status == CaseStatus.RECEIVED
    await rig.run()
    assert (await rig.case(case_id)).parts[0].status == PartStatus.PROCESSING
    assert len(rig.fakes["61"].supplement_sends) == 4


async def test_a_supplement_that_may_have_arrived_is_reconciled_not_resent(rig: Rig) -> None:
    case_id = await rig.submit("apply-once")
    await rig.run()
    assert (await rig.case(case_id)).status == CaseStatus.SUPPLEMENT_REQUESTED
    rig.fakes["61"].process_then_fail = 1  # taken, then the answer is lost
    await rig.supply(case_id)
    await rig.run()
    case = await rig.case(case_id)
    assert case.parts[0].status == PartStatus.PROCESSING
    assert "reconciled" in (case.transitions[-1].reason or "")
    (sent,) = rig.fakes["61"].supplement_sends
    assert sent.operation == "supplement-once"
    reconcile = [e for e in await rig.store.entries(case_id) if e.kind == EntryKind.RECONCILE]
    assert [e.payload for e in reconcile] == [{"supplement": 1}]


async def test_a_supplement_proven_absent_is_sent_again(rig: Rig) -> None:
    case_id = await rig.submit("apply-once")
    await rig.run()
    # A timeout before the back-end stored it: the lookup by the supplement's key finds nothing.
    rig.fakes["61"].fail_next = [BackendTimeout("slow", reached_backend=True)]
    await rig.supply(case_id)
    await rig.run()
    case = await rig.case(case_id)
    assert case.parts[0].status == PartStatus.PROCESSING
    keys = [c.context.idempotency_key for c in rig.fakes["61"].supplement_sends]
    assert keys == [supplement_key(case_id, 0, 1)] * 2
    assert len(rig.fakes["61"].supplements) == 1


async def test_a_refused_supplement_is_not_accepted_and_closes(rig: Rig) -> None:
    case_id = await rig.submit()
    await rig.run()
    rig.fakes["61"].fail_next = [BackendRejected("late", reached_backend=True)]
    await rig.supply(case_id)
    await rig.run()
    case = await rig.case(case_id)
    assert case.status == CaseStatus.CLOSED
    assert CaseStatus.NOT_ACCEPTED in [t.to_status for t in case.transitions]


async def test_a_second_request_is_answered_by_a_second_supplement(rig: Rig) -> None:
    case_id = await rig.submit()
    await rig.run()
    rig.fakes["61"].after_supplement = "SUP"  # still not enough
    await rig.supply(case_id)
    await rig.run()
    case = await rig.case(case_id)
    assert case.status == CaseStatus.SUPPLEMENT_REQUESTED
    rig.fakes["61"].after_supplement = "WIP"
    with pytest.raises(GatewayError) as caught:
        await rig.supply(case_id, note="other body, same key")
    assert caught.value.code == "client.idempotency_key_reused"
    case, created = await rig.supply(case_id, key="supp-00000002")
    assert created
    await rig.run()
    assert [c.context.idempotency_key for c in rig.fakes["61"].supplement_sends] == [
        supplement_key(case_id, 0, 1),
        supplement_key(case_id, 0, 2),
    ]
    assert (await rig.case(case_id)).parts[0].status == PartStatus.PROCESSING


async def test_refusals_write_nothing(rig: Rig) -> None:
    case_id = await rig.submit()
    for who, code in (
        (OTHER, "client.case_not_found"),
        (OPERATOR, "client.forbidden"),
        (CITIZEN, "client.case_not_awaiting_supplement"),  # not asked yet
    ):
        with pytest.raises(GatewayError) as caught:
            await rig.supply(case_id, who=who)
        assert caught.value.code == code
    await rig.run()
    with pytest.raises(GatewayError) as caught:
        await rig.service.supplement(CITIZEN, case_id, {"materials": [PHOTO]}, idempotency_key=None)
    assert caught.value.code == "client.idempotency_key_missing"
    with pytest.raises(GatewayError) as caught:
        await rig.supply(case_id, materials=[{**PHOTO, "digest": "sha256:bad"}])
    assert caught.value.code == "client.materials_invalid"
    with pytest.raises(GatewayError) as caught:
        await rig.service.supplement(
            CITIZEN, "TB63NOPE", {"materials": [PHOTO]}, idempotency_key="k" * 8
        )
    assert caught.value.code == "client.case_not_found"
    case = await rig.case(case_id)
    assert case.status == CaseStatus.SUPPLEMENT_REQUESTED
    assert case.supplements == ()
    assert not [e for e in await rig.store.entries(case_id) if e.kind == EntryKind.SUPPLEMENT]


async def test_a_callback_asks_for_a_supplement_with_what_is_missing(rig: Rig) -> None:
    rig.fakes["61"].answer = "WIP"
    case_id = await rig.submit()
    await rig.run()
    outcome = await rig.service.callback(
        "sys-61",
        {
            "sequence": 1,
            "case_id": case_id,
            "status": "supplement_requested",
            "supplement": {
                "materials": ["photo"],
                "message": "请补充照片",
                "deadline": "2026-12-01",
            },
        },
    )
    assert outcome.status == "applied"
    case = await rig.case(case_id)
    assert case.status == CaseStatus.SUPPLEMENT_REQUESTED
    assert case.parts[0].supplement is not None
    assert case.parts[0].supplement.materials == ("photo",)
    assert case.parts[0].result is not None
    assert case.parts[0].result["ref"] == "R61-1"
    await rig.supply(case_id)
    await rig.run()
    await rig.run(seconds=61)  # the poll scheduled before the request is superseded
    case = await rig.case(case_id)
    assert case.parts[0].status == PartStatus.PROCESSING
    polls = [e for e in await rig.store.entries(case_id) if e.kind == EntryKind.POLL]
    assert [e.last_error for e in polls if e.state == "done"][:1] == ["superseded"]
    assert [e for e in polls if e.state == "pending"], "the supplement's send polls again"


async def test_the_old_request_again_does_not_strand_a_waiting_supplement(rig: Rig) -> None:
    case_id = await rig.submit()
    await rig.run()
    await rig.supply(case_id)
    outcome = await rig.service.callback(
        "sys-61",
        {"sequence": 5, "case_id": case_id, "status": "supplement_requested", "supplement": ASKS},
    )
    assert outcome.status == "unchanged"
    await rig.run()
    assert len(rig.fakes["61"].supplement_sends) == 1
    assert (await rig.case(case_id)).parts[0].status == PartStatus.PROCESSING
