"""One contract for every CaseStore: SQLite always, PostgreSQL when reachable (marker postgres)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from gateway.cases.lifecycle import plan_replay, plan_step
from gateway.cases.model import (
    Case,
    CaseEvent,
    CaseStatus,
    MaterialRef,
    Mode,
    NewCase,
    PartPlan,
    PartStatus,
    body_digest,
)
from gateway.cases.store import (
    CallbackSeen,
    CaseStore,
    CreateResult,
    EntryKind,
    FinishEntry,
    IdempotencyConflict,
    LeaseLost,
    PartChange,
    StaleCase,
    Step,
    TransitionDraft,
)
from tests.unit.cases.conftest import StoreFactory

AT = "2026-01-01T00:00:00.000Z"
DIGEST = "sha256:" + "a" * 64


def new_case(
    key: str = "key-00000001",
    *,
    subject: str = "citizen-a",
    owner: str | None = None,
    data: dict[str, Any] | None = None,
    parts: int = 1,
    client_id: str = "portal-63",
) -> NewCase:
    data = data if data is not None else {"x": 1}
    return NewCase(
        case_id="TB63" + secrets.token_hex(8).upper(),
        service="pension-transfer",
        mode=Mode.JOINT if parts > 1 else Mode.ONLINE,
        subject=subject,
        owner=owner or subject,
        actor=None,
        actor_role=None,
        client_id=client_id,
        level="L3",
        receiving_province="63",
        purpose="test",
        authorisation_ref=None,
        idempotency_key=key,
        body_digest=body_digest({"data": data}),
        data=data,
        materials=(MaterialRef("id-card", "urn:e:1", DIGEST),),
        parts=tuple(PartPlan(p, "apply", f"sys-{p}") for p in ("61", "62", "32")[:parts]),
    )


INITIAL = (TransitionDraft(CaseStatus.RECEIVED, CaseStatus.RECEIVED),)


def event(case_id: str) -> CaseEvent:
    return CaseEvent("case_received", case_id, "pension-transfer", "received", AT, "s", "63", ())


async def create(store: CaseStore, case: NewCase, now: float = 100.0) -> CreateResult:
    return await store.create(case, at=AT, now=now, initial=INITIAL, events=[event(case.case_id)])


async def test_case_parts_timeline_and_outbox_are_written_together(store: CaseStore) -> None:
    result = await create(store, new_case(parts=2))
    assert result.created
    case = result.case
    assert case.status == CaseStatus.RECEIVED
    assert [p.status for p in case.parts] == [PartStatus.PENDING, PartStatus.PENDING]
    assert [t.to_status for t in case.transitions] == [CaseStatus.RECEIVED]
    assert case.materials[0].digest == DIGEST
    assert case.data == {"x": 1}
    entries = await store.entries(case.case_id)
    assert sorted((e.kind, e.part) for e in entries if e.kind != EntryKind.EVENT) == [
        (EntryKind.DELIVER, 0),
        (EntryKind.DELIVER, 1),
    ]
    assert [e.kind for e in entries].count(EntryKind.EVENT) == 1


async def test_same_key_and_body_is_the_same_case_other_body_conflicts(store: CaseStore) -> None:
    first = await create(store, new_case("key-same-0001"))
    again = await create(store, new_case("key-same-0001"))
    assert not again.created
    assert again.case.case_id == first.case.case_id
    assert len(await store.entries(first.case.case_id)) == 2  # nothing written twice
    with pytest.raises(IdempotencyConflict):
        await create(store, new_case("key-same-0001", data={"x": 2}))
    other = await create(store, new_case("key-same-0001", subject="citizen-b"))
    assert other.created, "keys are scoped to the account"


async def test_concurrent_creates_with_one_key_make_one_case(store_factory: StoreFactory) -> None:
    stores = [store_factory(), store_factory()]
    for s in stores:
        await s.open()
    try:
        results = await asyncio.gather(
            *(create(stores[i % 2], new_case("key-race-0001")) for i in range(8))
        )
        assert sum(r.created for r in results) == 1
        assert len({r.case.case_id for r in results}) == 1
    finally:
        for s in stores:
            await s.aclose()


async def test_claims_are_leased_and_disjoint(store_factory: StoreFactory) -> None:
    a, b = store_factory(), store_factory()
    await a.open()
    await b.open()
    try:
        for i in range(10):
            await create(a, new_case(f"key-claim-{i:04d}"))
        first, second = await asyncio.gather(
            a.claim("worker-a", now=200.0, lease=30, limit=15),
            b.claim("worker-b", now=200.0, lease=30, limit=15),
        )
        ids_a = {e.entry_id for e in first}
        ids_b = {e.entry_id for e in second}
        assert not ids_a & ids_b
        assert len(ids_a | ids_b) == 20  # 10 deliveries + 10 events
        assert await a.claim("worker-c", now=229.0, lease=30, limit=50) == []
        # worker-a "dies": after its lease, its entries come back, marked as abandoned.
        back = await b.claim("worker-c", now=231.0, lease=30, limit=50)
        assert {e.entry_id for e in back} == ids_a | ids_b
        assert all(e.abandoned for e in back)
        with pytest.raises(LeaseLost):
            await a.reschedule(next(iter(ids_a)), "worker-a", due=300.0, error="x")
    finally:
        await a.aclose()
        await b.aclose()


async def test_reschedule_counts_attempts_and_delays(store: CaseStore) -> None:
    case = (await create(store, new_case())).case
    (deliver,) = [e for e in await store.claim("w", now=100.0, lease=10, limit=10) if e.part == 0]
    await store.reschedule(deliver.entry_id, "w", due=150.0, error="backend.unavailable")
    assert [e for e in await store.claim("w", now=149.0, lease=10, limit=10) if e.part == 0] == []
    (again,) = [e for e in await store.claim("w", now=151.0, lease=10, limit=10) if e.part == 0]
    assert again.attempts == 1
    assert not again.abandoned
    assert again.last_error == "backend.unavailable"
    assert again.case_id == case.case_id


async def test_a_step_is_atomic_and_guarded_by_version_and_lease(store: CaseStore) -> None:
    case = (await create(store, new_case())).case
    claimed = await store.claim("w", now=100.0, lease=10, limit=10)
    deliver = next(e for e in claimed if e.kind == EntryKind.DELIVER)
    step = plan_step(
        case,
        [PartChange(0, PartStatus.FORWARDED, result={"accept_no": "A1"})],
        at=AT,
        now=101.0,
        finish=FinishEntry(deliver.entry_id, "w"),
    )
    with pytest.raises(LeaseLost):
        await store.commit(
            plan_step(
                case,
                [PartChange(0, PartStatus.FORWARDED)],
                at=AT,
                now=101.0,
                finish=FinishEntry(deliver.entry_id, "intruder"),
            )
        )
    after = await store.commit(step)
    assert after.status == CaseStatus.FORWARDED
    assert after.parts[0].result == {"accept_no": "A1"}
    assert after.version == case.version + 1
    with pytest.raises(StaleCase):
        await store.commit(step)  # planned on the old version
    kinds = [(e.kind, e.state) for e in await store.entries(case.case_id)]
    assert (EntryKind.DELIVER, "done") in kinds
    assert kinds.count((EntryKind.EVENT, "pending")) == 2  # received + status change


async def test_closing_erases_the_payload_and_keeps_the_digest(store: CaseStore) -> None:
    case = (await create(store, new_case())).case
    closed = await store.commit(
        plan_step(case, [PartChange(0, PartStatus.DONE, result={"ok": True})], at=AT, now=1.0)
    )
    assert closed.status == CaseStatus.CLOSED
    assert closed.data is None
    assert closed.body_digest == case.body_digest
    assert [t.to_status for t in closed.transitions] == [
        CaseStatus.RECEIVED,
        CaseStatus.FORWARDED,
        CaseStatus.RESULT_DELIVERED,
        CaseStatus.CLOSED,
    ]


async def test_dead_letters_keep_the_reason_and_replay_revives(store: CaseStore) -> None:
    case = (await create(store, new_case())).case
    deliver = next(e for e in await store.claim("w", now=100.0, lease=10, limit=10) if e.part == 0)
    dead = await store.commit(
        plan_step(
            case,
            [PartChange(0, PartStatus.DEAD_LETTERED, error_code="backend.unavailable")],
            at=AT,
            now=101.0,
            finish=FinishEntry(deliver.entry_id, "w", "dead", "backend.unavailable"),
        )
    )
    assert dead.status == CaseStatus.DEAD_LETTERED
    (letter,) = await store.dead_letters()
    assert letter.last_error == "backend.unavailable"
    replayed = await store.commit(plan_replay(dead, [letter], at=AT, now=200.0, actor="operator-1"))
    assert replayed.status == CaseStatus.RECEIVED
    assert await store.dead_letters() == []
    (again,) = [e for e in await store.claim("w", now=200.0, lease=10, limit=10) if e.part == 0]
    assert again.attempts == 0
    assert not again.abandoned


async def test_callbacks_are_ordered_per_system(store: CaseStore) -> None:
    case = (await create(store, new_case())).case
    step = plan_step(case, [], at=AT, now=1.0, callback=("sys-61", 5))
    case = await store.commit(step)
    for sequence, reason in ((5, "duplicate"), (4, "out_of_order")):
        with pytest.raises(CallbackSeen) as seen:
            await store.commit(plan_step(case, [], at=AT, now=1.0, callback=("sys-61", sequence)))
        assert seen.value.reason == reason
    await store.commit(plan_step(case, [], at=AT, now=1.0, callback=("sys-61", 9)))


async def test_lists_by_subject_and_by_window(store: CaseStore) -> None:
    await create(store, new_case("key-list-0001", subject="a", client_id="window-61"))
    await create(store, new_case("key-list-0002", subject="b", client_id="window-61"))
    await create(store, new_case("key-list-0003", subject="a", client_id="portal"))
    assert len(await store.list_cases(subject="a")) == 2
    window = await store.list_cases(client_id="window-61")
    assert len(window) == 2
    assert window[0].handling_provinces == ("61",)
    counts = await store.counts()
    assert counts.by_status == {"received": 3}
    assert counts.pending_entries == 6


async def test_co_applicants_find_the_case_by_their_keys(store: CaseStore) -> None:
    buyer_and_seller = dataclasses.replace(
        new_case("key-co-00001", subject="buyer"), applicants=("key-buyer", "key-seller")
    )
    created = await create(store, buyer_and_seller)
    await create(store, new_case("key-co-00002", subject="seller"))  # her own case
    await create(store, new_case("key-co-00003", subject="third"))
    case = await store.get(created.case.case_id)
    assert case is not None
    assert case.applicants == frozenset({"key-buyer", "key-seller"})
    seller = await store.list_cases(owners=["seller"], applicants=["key-seller"])
    assert sorted(c.case_id for c in seller) == sorted(
        [created.case.case_id, *(c.case_id for c in await store.list_cases(owners=["seller"]))]
    )
    assert len(seller) == 2
    assert await store.list_cases(owners=["nobody"], applicants=["key-none"]) == []
    assert len(await store.list_cases(owners=["third"], applicants=["key-seller"])) == 2


async def test_parts_applied_at_once_from_two_instances_all_land(
    store_factory: StoreFactory,
) -> None:
    """Each apply plans on the case as stored under its lock: none fails for a concurrent one."""
    first, second = store_factory(), store_factory()
    await first.open()
    await second.open()
    try:
        many = dataclasses.replace(
            new_case(parts=1), parts=tuple(PartPlan("61", "apply", "sys-61") for _ in range(12))
        )
        case = (await create(first, many)).case

        def done(number: int) -> Callable[[Case], Step]:
            def plan(fresh: Case) -> Step:
                change = PartChange(number, PartStatus.DONE, result={"n": number})
                return plan_step(fresh, [change], at=AT, now=1.0)

            return plan

        applied = await asyncio.gather(
            *(
                (first if n % 2 else second).apply(case.case_id, done(n))
                for n in range(len(many.parts))
            )
        )
        assert all(a is not None and a.step is not None for a in applied)
        after = await first.get(case.case_id)
        assert after is not None
        assert [p.status for p in after.parts] == [PartStatus.DONE] * 12
        assert [p.result for p in after.parts] == [{"n": n} for n in range(12)]
        assert after.status == CaseStatus.CLOSED
        assert after.version == case.version + 12
        part_lines = [t.part for t in after.transitions if t.part_status == PartStatus.DONE]
        assert sorted(part_lines) == list(range(12))  # type: ignore[type-var]
        assert [t.to_status for t in after.transitions].count(CaseStatus.CLOSED) == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_apply_finishes_the_entry_when_the_plan_changes_nothing(store: CaseStore) -> None:
    case = (await create(store, new_case())).case
    [entry] = [
        e for e in await store.claim("w1", now=1e9, lease=30.0, limit=10) if e.part is not None
    ]
    applied = await store.apply(
        case.case_id, lambda _case: None, otherwise=FinishEntry(entry.entry_id, "w1", "done", "x")
    )
    assert applied is not None
    assert applied.step is None
    after = await store.get(case.case_id)
    assert after is not None
    assert after.version == case.version
    states = {e.entry_id: e.state for e in await store.entries(case.case_id)}
    assert states[entry.entry_id] == "done"
    assert await store.apply("TB63NOSUCHCASE", lambda _case: None) is None


async def test_apply_changes_nothing_when_the_lease_is_lost(store: CaseStore) -> None:
    case = (await create(store, new_case())).case
    [entry] = [
        e for e in await store.claim("w1", now=1e9, lease=30.0, limit=10) if e.part is not None
    ]

    def plan(fresh: Case) -> Step:
        finish = FinishEntry(entry.entry_id, "someone-else")
        return plan_step(fresh, [PartChange(0, PartStatus.DONE)], at=AT, now=1.0, finish=finish)

    with pytest.raises(LeaseLost):
        await store.apply(case.case_id, plan)
    after = await store.get(case.case_id)
    assert after is not None
    assert after.version == case.version
    assert after.parts[0].status == PartStatus.PENDING


async def test_no_event_entries_when_events_go_nowhere(store: CaseStore) -> None:
    """With the event sink ``none`` there is nowhere to hand an event: none is written."""
    store.keep_events = False  # type: ignore[attr-defined]
    case = (await create(store, new_case())).case
    step = plan_step(case, [PartChange(0, PartStatus.DONE, result={"ok": True})], at=AT, now=1.0)
    assert step.events  # the planner still says what happened (status change, closure)
    await store.commit(step)
    kinds = [e.kind for e in await store.entries(case.case_id)]
    assert kinds == [EntryKind.DELIVER]


async def test_open_cases_are_found_by_a_licence_among_their_materials(store: CaseStore) -> None:
    ref = "elicence:61:birth-medical-certificate:S610000102"
    mine = dataclasses.replace(
        new_case("key-lic-0001"), materials=(MaterialRef("bmc", ref, DIGEST),)
    )
    # A reference that merely contains this one, and a LIKE wildcard in another, are not it.
    longer = dataclasses.replace(
        new_case("key-lic-0002"), materials=(MaterialRef("bmc", ref + "9", DIGEST),)
    )
    wild = dataclasses.replace(
        new_case("key-lic-0003"),
        materials=(MaterialRef("bmc", "elicence:61:birth_medical%certificate:S610000102", DIGEST),),
    )
    for case in (mine, longer, wild):
        await create(store, case)
    assert await store.open_cases_with_material(ref) == [mine.case_id]
    assert await store.open_cases_with_material(
        "elicence:61:birth_medical%certificate:S610000102"
    ) == [wild.case_id]
    assert await store.open_cases_with_material("elicence:63:none:0") == []


async def test_open_cases_list_their_materials_by_reference_prefix(store: CaseStore) -> None:
    shaanxi = MaterialRef("bmc", "elicence:61:birth-medical-certificate:S610000102", DIGEST)
    qinghai = MaterialRef("rec", "elicence:63:real-estate-certificate:Q1", DIGEST)
    one = dataclasses.replace(new_case("key-pre-0001"), materials=(shaanxi, qinghai))
    other = dataclasses.replace(
        new_case("key-pre-0002"), materials=(MaterialRef("x", "urn:elicence:61:x", DIGEST),)
    )
    for case in (one, other):
        await create(store, case)
    assert await store.open_case_materials("elicence:61:") == [(one.case_id, shaanxi)]
    assert await store.open_case_materials("elicence:63:") == [(one.case_id, qinghai)]
    assert await store.open_case_materials("elicence:62:") == []
