"""补齐补正 in the CaseStore contract (SQLite always, PostgreSQL when reachable): a supplement is
written with its outbox entry, part change, timeline and events in one transaction, or not at
all, and its key makes a retry the same supplement."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.cases.lifecycle import plan_step
from gateway.cases.model import (
    Case,
    CaseStatus,
    MaterialRef,
    PartStatus,
    Supplement,
    SupplementRequest,
)
from gateway.cases.store import (
    CaseStore,
    EntryKind,
    IdempotencyConflict,
    PartChange,
    StaleCase,
    SupplementSeen,
)
from gateway.cases.supplements import plan_supplement
from tests.unit.cases.conftest import StoreFactory
from tests.unit.cases.test_store_contract import AT, DIGEST, create, new_case

ASKED = SupplementRequest(("photo",), "照片不清晰", "2026-12-10", AT)


def supplement(
    key: str = "supp-00000001", sequence: int = 1, digest: str = "sha256:" + "1" * 64
) -> Supplement:
    return Supplement(
        sequence=sequence,
        part=0,
        idempotency_key=key,
        body_digest=digest,
        materials=(MaterialRef("photo", "urn:upload:photo-2", DIGEST),),
        note="新照片",
        actor="citizen-a",
        submitted_at=AT,
    )


async def waiting(store: CaseStore, key: str = "key-00000001") -> Case:
    """A case whose handling province asked for a supplement (补齐补正)."""
    case = (await create(store, new_case(key))).case
    return await store.commit(
        plan_step(
            case,
            [
                PartChange(
                    0, PartStatus.SUPPLEMENT_REQUESTED, result={"ref": "R1"}, supplement=ASKED
                )
            ],
            at=AT,
            now=1.0,
        )
    )


async def kinds(store: CaseStore, case_id: str) -> list[tuple[EntryKind, str]]:
    return [(e.kind, e.state) for e in await store.entries(case_id)]


async def test_the_request_is_kept_on_the_part(store: CaseStore) -> None:
    case = await waiting(store)
    assert case.status == CaseStatus.SUPPLEMENT_REQUESTED
    assert case.parts[0].supplement == ASKED
    assert case.parts[0].result == {"ref": "R1"}
    assert case.supplements == ()
    events = [e.payload for e in await store.entries(case.case_id) if e.kind == EntryKind.EVENT]
    assert any(p and p["type"] == "case_supplement_requested" for p in events)


async def test_supplement_entry_part_and_timeline_are_written_together(store: CaseStore) -> None:
    case = await waiting(store)
    before = await kinds(store, case.case_id)
    after = await store.commit(plan_supplement(case, supplement(), at=AT, now=10.0))
    assert after.status == CaseStatus.RECEIVED
    assert after.parts[0].status == PartStatus.PENDING
    assert after.parts[0].supplement == ASKED, "the request stays, answered"
    assert after.parts[0].result == {"ref": "R1"}
    assert after.supplements == (supplement(),)
    assert after.version == case.version + 1
    assert after.transitions[-1].to_status == CaseStatus.RECEIVED
    assert after.transitions[-1].actor == "citizen-a"
    entries = await store.entries(case.case_id)
    (send,) = [e for e in entries if e.kind == EntryKind.SUPPLEMENT]
    assert (send.part, send.payload, send.state) == (0, {"supplement": 1}, "pending")
    events = [e.payload for e in entries if e.kind == EntryKind.EVENT]
    assert len(entries) == len(before) + 3  # the send, the status change, the supplement event
    assert [p["type"] for p in events[-2:] if p] == [
        "case_status_changed",
        "case_supplement_received",
    ]
    claimed = await store.claim("w", now=10.0, lease=10, limit=50)
    assert any(e.kind == EntryKind.SUPPLEMENT for e in claimed)


async def test_nothing_of_a_refused_supplement_is_written(store: CaseStore) -> None:
    case = await waiting(store)
    written = await store.commit(plan_supplement(case, supplement(), at=AT, now=10.0))
    entries = await store.entries(case.case_id)

    # Planned on the old version: stale, nothing written.
    with pytest.raises(StaleCase):
        await store.commit(plan_supplement(case, supplement("supp-00000002", 2), at=AT, now=11.0))
    # The same key again, on the fresh version: the same body is seen, another body conflicts.
    fresh = dataclasses.replace(
        written,
        status=CaseStatus.SUPPLEMENT_REQUESTED,
        parts=(dataclasses.replace(written.parts[0], status=PartStatus.SUPPLEMENT_REQUESTED),),
    )
    with pytest.raises(SupplementSeen) as seen:
        await store.commit(plan_supplement(fresh, supplement(sequence=2), at=AT, now=12.0))
    assert seen.value.sequence == 1
    with pytest.raises(IdempotencyConflict):
        await store.commit(
            plan_supplement(fresh, supplement(sequence=2, digest=DIGEST), at=AT, now=12.0)
        )
    after = await store.get(case.case_id)
    assert after is not None
    assert after.version == written.version
    assert after.supplements == written.supplements
    assert after.parts == written.parts
    assert after.transitions == written.transitions
    assert await store.entries(case.case_id) == entries


async def test_a_second_supplement_has_its_own_sequence(store: CaseStore) -> None:
    case = await waiting(store)
    case = await store.commit(plan_supplement(case, supplement(), at=AT, now=10.0))
    case = await store.commit(
        plan_step(
            case,
            [PartChange(0, PartStatus.SUPPLEMENT_REQUESTED, supplement=ASKED)],
            at=AT,
            now=11.0,
        )
    )
    case = await store.commit(
        plan_supplement(case, supplement("supp-00000002", 2), at=AT, now=12.0)
    )
    assert [(s.sequence, s.idempotency_key) for s in case.supplements] == [
        (1, "supp-00000001"),
        (2, "supp-00000002"),
    ]
    sends = [e.payload for e in await store.entries(case.case_id) if e.kind == EntryKind.SUPPLEMENT]
    assert sends == [{"supplement": 1}, {"supplement": 2}]


async def test_keys_are_scoped_to_the_case(store: CaseStore) -> None:
    one = await waiting(store, "key-scope-0001")
    two = await waiting(store, "key-scope-0002")
    await store.commit(plan_supplement(one, supplement(), at=AT, now=10.0))
    taken = await store.commit(plan_supplement(two, supplement(), at=AT, now=10.0))
    assert len(taken.supplements) == 1


async def test_racing_twins_write_one_supplement(store_factory: StoreFactory) -> None:
    stores = [store_factory(), store_factory()]
    for s in stores:
        await s.open()
    try:
        case = await waiting(stores[0])
        step = plan_supplement(case, supplement(), at=AT, now=10.0)
        outcomes = await asyncio.gather(
            *(stores[i % 2].commit(step) for i in range(6)), return_exceptions=True
        )
        written = [o for o in outcomes if isinstance(o, Case)]
        assert len(written) == 1
        assert all(isinstance(o, (StaleCase, SupplementSeen)) for o in outcomes if o not in written)
        entries = await stores[1].entries(case.case_id)
        assert [e.kind for e in entries].count(EntryKind.SUPPLEMENT) == 1
        final = await stores[1].get(case.case_id)
        assert final is not None
        assert len(final.supplements) == 1
    finally:
        for s in stores:
            await s.aclose()
