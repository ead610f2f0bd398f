"""The delivery worker against fake provincial systems, on both stores."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.record import EventType
from gateway.cases.audit import MemoryCaseAudit
from gateway.cases.config import DeliverySettings
from gateway.cases.events import EventSinkError
from gateway.cases.model import CaseStatus, PartStatus, delivery_key
from gateway.cases.service import CaseService
from gateway.cases.store import CaseStore
from gateway.cases.worker import DeliveryWorker
from gateway.errors import BackendRejected, BackendServerError
from gateway.principal import Principal
from tests.unit.cases.catalog_fixtures import FakeClock, FakeProvince, build_catalog, unavailable

CITIZEN = Principal("citizen-a", "L3", "portal-63")
MATERIALS = [{"code": "id-card", "ref": "urn:elicence:1", "digest": "sha256:" + "b" * 64}]


class MemorySink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = 0

    async def send(self, event: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise EventSinkError("down")
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
    sink: MemorySink
    audit: MemoryCaseAudit

    async def submit(self, key: str = "key-00000001", **body: Any) -> str:
        envelope = {
            "service": "filing",
            "operation": "apply",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "test",
            "data": {"n": 1},
            "materials": MATERIALS,
            **body,
        }
        if "parts" in body:
            envelope.pop("handling_province")
            envelope.pop("operation")
        submitted = await self.service.submit(CITIZEN, envelope, idempotency_key=key)
        return submitted.case.case_id

    async def run(self, *, seconds: float = 0.0, rounds: int = 1) -> None:
        for _ in range(rounds):
            self.clock.advance(seconds)
            await self.worker.drain()


@pytest.fixture
async def rig(store: CaseStore, tmp_path: Path) -> Rig:
    catalog, fakes = build_catalog(tmp_path)
    clock = FakeClock()
    sink = MemorySink()
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
    service = CaseService(store, lambda: catalog, audit=audit, clock=clock)
    return Rig(store, service, worker, fakes, clock, sink, audit)


async def status(rig: Rig, case_id: str) -> tuple[CaseStatus, list[PartStatus]]:
    case = await rig.store.get(case_id)
    assert case is not None
    return case.status, [p.status for p in case.parts]


async def test_delivery_forwards_the_case_key_and_id_then_polls_to_closure(rig: Rig) -> None:
    case_id = await rig.submit()
    await rig.run()
    assert await status(rig, case_id) == (CaseStatus.PROCESSING, [PartStatus.PROCESSING])
    (send,) = rig.fakes["61"].sends
    assert send.context.idempotency_key == delivery_key(case_id, 0)
    assert send.context.case_id == case_id
    assert send.context.principal == "citizen-a"
    rig.fakes["61"].submissions[delivery_key(case_id, 0)]["status"] = "DONE"
    await rig.run(seconds=61)
    case = await rig.store.get(case_id)
    assert case is not None
    assert case.status == CaseStatus.CLOSED
    assert case.data is None, "the payload is erased once the case is closed"
    assert [t.to_status for t in case.transitions] == [
        CaseStatus.RECEIVED,
        CaseStatus.FORWARDED,
        CaseStatus.PROCESSING,
        CaseStatus.RESULT_DELIVERED,
        CaseStatus.CLOSED,
    ]
    types = [e["type"] for e in rig.sink.events]
    assert types[0] == "case_received"
    assert types[-1] == "case_closed"
    assert rig.sink.events[-1]["detail"]["rating"]["invite"] is True
    audited = [e for e in rig.audit.events if e.type == EventType.CASE_TRANSITION]
    assert [e.outcome for e in audited][-1] == "closed"
    assert all(e.case_id == case_id for e in audited)


async def test_outage_is_retried_on_a_persisted_schedule_then_dead_lettered_and_replayed(
    rig: Rig,
) -> None:
    rig.fakes["61"].fail_next = [unavailable() for _ in range(3)]
    case_id = await rig.submit()
    await rig.run()
    assert await status(rig, case_id) == (CaseStatus.RECEIVED, [PartStatus.PENDING])
    await rig.run(seconds=5)
    assert len(rig.fakes["61"].sends) == 1, "the backoff holds the next attempt"
    await rig.run(seconds=10)
    await rig.run(seconds=20)
    assert len(rig.fakes["61"].sends) == 3
    assert await status(rig, case_id) == (CaseStatus.DEAD_LETTERED, [PartStatus.DEAD_LETTERED])
    (letter,) = await rig.store.dead_letters()
    assert letter.last_error == "backend.unavailable"
    await rig.service.replay(case_id, operator="operator-1")
    await rig.run()
    assert await status(rig, case_id) == (CaseStatus.PROCESSING, [PartStatus.PROCESSING])
    assert await rig.store.dead_letters() == []


async def test_a_dead_letter_keeps_the_failure_that_paused_the_system(
    store: CaseStore, tmp_path: Path
) -> None:
    """Two 503s open the breaker; the third delivery meets only the pause. The dead letter says
    both: the last error (the pause) and, beside it, the system's own first failure."""
    catalog, fakes = build_catalog(tmp_path, failure_threshold=2)
    clock = FakeClock()
    settings = DeliverySettings(max_attempts=3, initial_backoff=10, max_backoff=100, jitter=0)
    worker = DeliveryWorker(
        store, lambda: catalog, settings, events=MemorySink(), clock=clock, rng=random.Random(1)
    )
    service = CaseService(store, lambda: catalog, clock=clock)
    fakes["61"].fail_next = [
        BackendServerError("HTTP 503 from system sys-61.", reached_backend=True) for _ in range(2)
    ]
    envelope = {
        "service": "filing",
        "operation": "apply",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "test",
        "data": {"n": 1},
        "materials": MATERIALS,
    }
    case_id = (await service.submit(CITIZEN, envelope, idempotency_key="key-breaker1")).case.case_id
    for _ in range(3):
        await worker.drain()
        clock.advance(200)
    assert len(fakes["61"].sends) == 2, "the paused system was not called a third time"
    case = await store.get(case_id)
    assert case is not None
    (part,) = case.parts
    assert part.status == PartStatus.DEAD_LETTERED
    assert part.error_code == "backend.circuit_open"
    assert part.cause == "backend.server_error: HTTP 503 from system sys-61."
    (dead,) = await store.dead_letters()
    assert dead.last_error == "backend.circuit_open"
    assert dead.cause == "backend.server_error: HTTP 503 from system sys-61."


async def test_refusal_by_the_back_end_is_not_accepted_and_closes(rig: Rig) -> None:
    rig.fakes["61"].fail_next = [BackendRejected("no", reached_backend=True)]
    case_id = await rig.submit()
    await rig.run()
    case = await rig.store.get(case_id)
    assert case is not None
    assert case.status == CaseStatus.CLOSED
    assert CaseStatus.NOT_ACCEPTED in [t.to_status for t in case.transitions]
    assert case.parts[0].error_code == "backend.rejected"


async def test_never_policy_send_with_unknown_outcome_is_reconciled_not_resent(rig: Rig) -> None:
    rig.fakes["61"].process_then_fail = 1  # it stores the submission, then times out
    case_id = await rig.submit(operation="apply-once")
    await rig.run()
    assert len(rig.fakes["61"].sends) == 1, "never resent blindly"
    assert await status(rig, case_id) == (CaseStatus.PROCESSING, [PartStatus.PROCESSING])
    case = await rig.store.get(case_id)
    assert case is not None
    assert CaseStatus.OUTCOME_UNKNOWN in [t.to_status for t in case.transitions]


async def test_unknown_outcome_that_never_arrived_is_sent_again(rig: Rig) -> None:
    # A 5xx before storing anything: it may have been processed, as far as we can tell.
    rig.fakes["61"].fail_next = [BackendServerError("reset", reached_backend=True)]
    case_id = await rig.submit(operation="apply-once")
    await rig.run()
    assert len(rig.fakes["61"].sends) == 2, "lookup proved it absent, so it was sent once more"
    assert await status(rig, case_id) == (CaseStatus.PROCESSING, [PartStatus.PROCESSING])
    assert len(rig.fakes["61"].submissions) == 1


async def test_worker_death_during_a_never_send_leads_to_reconciliation(rig: Rig) -> None:
    case_id = await rig.submit(operation="apply-once")
    claimed = await rig.store.claim("dead-worker", now=rig.clock(), lease=30, limit=10)
    assert claimed  # and then the worker "dies" holding them
    rig.fakes["61"].submissions[delivery_key(case_id, 0)] = {"ref": "R1", "status": "DONE"}
    await rig.run(seconds=31)
    assert rig.fakes["61"].sends == [], "not resent: the lookup found it"
    assert (await status(rig, case_id))[0] == CaseStatus.CLOSED


async def test_joint_case_fans_out_and_completes_jointly(rig: Rig) -> None:
    parts = [
        {"handling_province": "61", "operation": "apply"},
        {"handling_province": "62", "operation": "apply"},
    ]
    case_id = await rig.submit(mode="joint", parts=parts)
    rig.fakes["61"].answer = "DONE"
    await rig.run()
    assert await status(rig, case_id) == (
        CaseStatus.PROCESSING,
        [PartStatus.DONE, PartStatus.PROCESSING],
    )
    rig.fakes["62"].submissions[delivery_key(case_id, 1)]["status"] = "DONE"
    await rig.run(seconds=61)
    assert (await status(rig, case_id))[0] == CaseStatus.CLOSED


async def test_joint_case_reports_the_part_that_failed(rig: Rig) -> None:
    parts = [
        {"handling_province": "61", "operation": "apply"},
        {"handling_province": "62", "operation": "apply"},
    ]
    rig.fakes["62"].answer = "REJ"
    case_id = await rig.submit(mode="joint", parts=parts)
    await rig.run()
    case = await rig.store.get(case_id)
    assert case is not None
    assert case.status == CaseStatus.CLOSED
    failed = [t for t in case.transitions if t.to_status == CaseStatus.NOT_ACCEPTED]
    assert [t.part for t in failed] == [1]
    assert case.part(1).status == PartStatus.NOT_ACCEPTED


async def test_events_are_retried_when_the_sink_is_down(rig: Rig) -> None:
    rig.sink.fail = 1
    await rig.submit()
    await rig.run()
    assert [e["type"] for e in rig.sink.events] == ["case_status_changed", "case_status_changed"]
    await rig.run(seconds=11)
    assert "case_received" in [e["type"] for e in rig.sink.events]
    assert all(e["event_id"] for e in rig.sink.events)


async def test_the_running_worker_claims_again_only_when_work_is_due(
    store: CaseStore, tmp_path: Path
) -> None:
    """A short batch means nothing else was due, so the loop waits instead of claiming again;
    what a step makes due (the case's events here) wakes it at once, not at the next poll."""
    catalog, _ = build_catalog(tmp_path)
    sink = MemorySink()
    # A poll far beyond the test's patience: anything that waited for it would time out.
    settings = DeliverySettings(max_attempts=3, jitter=0, poll_interval=3600)
    worker = DeliveryWorker(store, lambda: catalog, settings, events=sink, rng=random.Random(1))
    service = CaseService(store, lambda: catalog)
    envelope = {
        "service": "filing",
        "operation": "apply",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "test",
        "data": {"n": 1},
        "materials": MATERIALS,
    }
    submitted = await service.submit(CITIZEN, envelope, idempotency_key="key-00000001")
    case_id = submitted.case.case_id
    worker.start()
    try:
        async with asyncio.timeout(10):
            while True:
                case = await store.get(case_id)
                assert case is not None
                types = [e["type"] for e in sink.events]
                if case.status == CaseStatus.PROCESSING and len(types) >= 2:
                    break
                await asyncio.sleep(0.01)
    finally:
        await worker.aclose()
    assert worker.stats.claims >= 2
    assert worker.stats.empty_claims == 0, "a short batch is not followed by an empty claim"
