"""Linked cases (联动办理): dependencies, data between parts, unwinding, and config checks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.cases.audit import MemoryCaseAudit
from gateway.cases.config import DeliverySettings
from gateway.cases.model import Case, CaseStatus, PartStatus
from gateway.cases.service import CaseService
from gateway.cases.store import CaseStore
from gateway.cases.worker import DeliveryWorker
from gateway.errors import ValidationFailed
from gateway.principal import Principal
from gateway.settings import ServiceSettings
from tests.unit.cases.catalog_fixtures import FakeClock
from tests.unit.cases.linked_fixtures import (
    CHECK,
    FINAL,
    PartSpec,
    ScriptedSystem,
    linked_catalog,
    linked_service,
)

CITIZEN = Principal("citizen-a", "L3", "portal-63")
P = PartStatus
S = CaseStatus

# 二手房: the contract is filed, then tax and the buyer's check, then registration, then the
# utilities move (gas is optional: its refusal does not undo the home's transfer).
HOME = (
    PartSpec("contract"),
    PartSpec("buyer-check", operation=CHECK),
    PartSpec("tax", after=("contract",)),
    PartSpec("registration", operation=FINAL, after=("tax", "buyer-check")),
    PartSpec("electricity", after=("registration",)),
    PartSpec("gas", after=("registration",), required=False),
)


@dataclass
class LinkedRig:
    store: CaseStore
    service: CaseService
    worker: DeliveryWorker
    system: ScriptedSystem
    clock: FakeClock
    audit: MemoryCaseAudit

    async def submit(self, key: str = "key-linked-01") -> str:
        body = {
            "service": "linked",
            "receiving_province": "63",
            "purpose": "test",
            "data": {"applicant": "A"},
        }
        return (await self.service.submit(CITIZEN, body, idempotency_key=key)).case.case_id

    async def settle(self, rounds: int = 400) -> None:
        """Work until nothing is pending, letting backoffs and leases run out."""
        for _ in range(rounds):
            if not await self.worker.run_once():
                if (await self.store.counts()).pending_entries == 0:
                    return
                self.clock.advance(31.0)
        raise AssertionError("the outbox never settled")

    async def case(self, case_id: str) -> Case:
        found = await self.store.get(case_id)
        assert found is not None
        return found


def make_rig(
    store: CaseStore, tmp_path: Path, parts: tuple[PartSpec, ...], system: ScriptedSystem
) -> LinkedRig:
    catalog = linked_catalog(tmp_path, parts, system)
    clock = FakeClock()
    audit = MemoryCaseAudit()
    settings = DeliverySettings(
        max_attempts=4, initial_backoff=1, max_backoff=10, jitter=0, lease=30, batch=16
    )
    worker = DeliveryWorker(
        store,
        lambda: catalog,
        settings,
        events=_NullSink(),
        audit=audit,
        clock=clock,
        rng=random.Random(1),
    )
    service = CaseService(store, lambda: catalog, audit=audit, clock=clock)
    return LinkedRig(store, service, worker, system, clock, audit)


class _NullSink:
    async def send(self, event: Any) -> None:
        return None

    async def aclose(self) -> None:
        return None


def statuses(case: Case) -> dict[str, PartStatus]:
    return {p.label: p.status for p in case.parts}


async def test_parts_wait_for_their_dependencies_and_receive_their_answers(
    store: CaseStore, tmp_path: Path
) -> None:
    rig = make_rig(store, tmp_path, HOME, ScriptedSystem())
    case_id = await rig.submit()
    first = await rig.case(case_id)
    assert statuses(first) == {
        "contract": P.PENDING,
        "buyer-check": P.PENDING,
        "tax": P.WAITING,
        "registration": P.WAITING,
        "electricity": P.WAITING,
        "gas": P.WAITING,
    }
    await rig.worker.run_once()  # only what waits for nothing goes out first
    assert sorted(part for _op, part in rig.system.log) == [0, 1]
    await rig.settle()
    case = await rig.case(case_id)
    assert set(statuses(case).values()) == {P.DONE}
    assert case.status == S.CLOSED
    assert case.outcome is not None
    assert case.outcome["result"] == "done"
    order = [part for _op, part in rig.system.log]
    assert order.index(2) > order.index(0)  # tax after the contract
    assert order.index(3) > max(order.index(2), order.index(1))  # registration after both
    assert min(order.index(4), order.index(5)) > order.index(3)
    # Each part received the answers of the parts it waited for, and nothing else.
    assert rig.system.inputs[2] == {"applicant": "A", "refs": {"contract": "R0"}}
    assert rig.system.inputs[3] == {"applicant": "A", "refs": {"tax": "R2", "buyer-check": "C1"}}
    assert rig.system.inputs[5] == {"applicant": "A", "refs": {"registration": "R3"}}
    assert rig.system.undone == {}


async def test_a_refused_required_part_undoes_what_was_accepted_and_sends_nothing_more(
    store: CaseStore, tmp_path: Path
) -> None:
    rig = make_rig(store, tmp_path, HOME, ScriptedSystem(script={3: "refuse"}))
    case_id = await rig.submit()
    await rig.settle()
    case = await rig.case(case_id)
    assert statuses(case) == {
        "contract": P.COMPENSATED,
        "buyer-check": P.DONE,  # a check has nothing to undo
        "tax": P.COMPENSATED,
        "registration": P.NOT_ACCEPTED,
        "electricity": P.CANCELLED,
        "gas": P.CANCELLED,
    }
    assert case.status == S.CLOSED
    assert [t.to_status for t in case.transitions][-2:] == [S.NOT_ACCEPTED, S.CLOSED]
    assert S.COMPENSATING in [t.to_status for t in case.transitions]
    assert case.outcome is not None
    assert case.outcome["result"] == "not_accepted"
    assert case.outcome["failed_part"] == "registration"
    assert case.outcome["parts"]["compensated"] == ["contract", "tax"]
    assert case.outcome["parts"]["cancelled"] == ["electricity", "gas"]
    assert "not_undone" not in case.outcome  # the buyer's check changed nothing
    # Never sent: the utilities; undone once each: the contract and the tax filing.
    assert not {4, 5} & {part for _op, part in rig.system.log}
    assert sorted(part for op, part in rig.system.log if op == "undo") == [0, 2]
    assert set(rig.system.undone) == {f"{case_id}.0.undo", f"{case_id}.2.undo"}
    assert case.data is None


async def test_an_optional_part_that_fails_leaves_the_case_done(
    store: CaseStore, tmp_path: Path
) -> None:
    rig = make_rig(store, tmp_path, HOME, ScriptedSystem(script={5: "refuse"}))
    case_id = await rig.submit()
    await rig.settle()
    case = await rig.case(case_id)
    assert statuses(case)["gas"] == P.NOT_ACCEPTED
    assert case.status == S.CLOSED
    assert case.outcome is not None
    assert case.outcome["result"] == "done"
    assert case.outcome["parts"]["not_accepted"] == ["gas"]
    assert rig.system.undone == {}


async def test_a_dead_lettered_required_part_unwinds_and_a_failed_undo_is_replayed(
    store: CaseStore, tmp_path: Path
) -> None:
    system = ScriptedSystem(script={2: "down"}, undo_flaky=100)
    rig = make_rig(store, tmp_path, HOME, system)
    case_id = await rig.submit()
    await rig.settle()
    case = await rig.case(case_id)
    assert statuses(case)["tax"] == P.DEAD_LETTERED
    assert statuses(case)["contract"] == P.COMPENSATION_FAILED
    assert case.status == S.DEAD_LETTERED  # the undo could not be delivered: operators
    dead = await store.dead_letters()
    assert {(e.part, e.kind.value) for e in dead} == {(2, "deliver"), (0, "compensate")}
    system.undo_flaky = 0
    replayed = await rig.service.replay(case_id, operator="op-1")
    assert statuses(replayed)["contract"] == P.COMPENSATING
    assert statuses(replayed)["tax"] == P.DEAD_LETTERED  # the trigger is not sent again
    await rig.settle()
    case = await rig.case(case_id)
    assert statuses(case)["contract"] == P.COMPENSATED
    assert case.status == S.CLOSED
    assert case.outcome is not None
    assert case.outcome["result"] == "dead_lettered"
    assert rig.system.calls[FINAL, 3] == 0


async def test_a_lost_answer_is_reconciled_then_released(store: CaseStore, tmp_path: Path) -> None:
    rig = make_rig(store, tmp_path, HOME, ScriptedSystem(script={0: "lost"}))
    case_id = await rig.submit()
    await rig.settle()
    case = await rig.case(case_id)
    assert case.status == S.CLOSED
    assert set(statuses(case).values()) == {P.DONE}
    assert rig.system.calls["file", 0] == 1  # found by its key, never sent twice


# --- configuration -----------------------------------------------------------------------------


def _problems(parts: dict[str, Any], **extra: Any) -> str:
    service = linked_service([PartSpec("a"), PartSpec("b")])
    service["linked"]["parts"] = parts
    service["linked"].update(extra)
    with pytest.raises(ValidationError) as caught:
        ServiceSettings.model_validate(service)
    return str(caught.value)


def test_a_dependency_cycle_is_a_config_error() -> None:
    message = _problems(
        {
            "a": {"operation": "file", "handling": "61", "after": ["c"]},
            "b": {"operation": "file", "handling": "61", "after": ["a"]},
            "c": {"operation": "file", "handling": "61", "after": ["b"]},
        }
    )
    assert "wait for each other" in message
    assert "a → c → b → a" in message or "c → b → a → c" in message or "b → a → c → b" in message


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (
            {
                "a": {"operation": "file", "handling": "61"},
                "b": {"operation": "file", "handling": "61", "after": ["nope"]},
            },
            "linked.parts.b.after: no part 'nope'",
        ),
        (
            {
                "a": {"operation": "file", "handling": "61", "required": False},
                "b": {"operation": "file", "handling": "61", "after": ["a"]},
            },
            "a required part cannot wait for the optional part 'a'",
        ),
        (
            {
                "a": {"operation": "file", "handling": "61"},
                "b": {"operation": "file", "handling": "61", "input": {"x": "parts.a.ref"}},
            },
            "reads part 'a', which this part does not wait for",
        ),
        (
            {
                "a": {"operation": "file", "handling": "61"},
                "b": {"operation": "undo", "handling": "61"},
            },
            "carries supplements or undos",
        ),
        (
            {
                "a": {"operation": "nope", "handling": "61"},
                "b": {"operation": "file", "handling": "61"},
            },
            "linked.parts.a.operation: no operation 'nope'",
        ),
        (
            {
                "a": {"operation": "file", "handling": "61"},
                "b": {"operation": "file", "handling": "61", "handling_from": "x"},
            },
            "give exactly one of 'handling' and 'handling_from'",
        ),
        (
            {
                "a": {"operation": "file", "handling": "99"},
                "b": {"operation": "file", "handling": "61"},
            },
            "'99' is not a GB/T 2260 province code",
        ),
        (
            {
                "a": {"operation": "file", "handling": "61"},
                "b": {"operation": "file", "handling": "61", "input": {"x": "elsewhere.y"}},
            },
            "a source is data.<field> or parts.<name>.<field>",
        ),
    ],
)
def test_linked_blocks_are_checked(parts: dict[str, Any], expected: str) -> None:
    assert expected in _problems(parts)


def test_inputs_are_checked_against_each_operations_schema() -> None:
    service = linked_service([PartSpec("a"), PartSpec("b", after=("a",))])
    strict = {
        "type": "object",
        "required": ["filing_number", "applicant"],
        "additionalProperties": False,
        "properties": {"filing_number": {"type": "string"}, "applicant": {"type": "string"}},
    }
    service["operations"]["file"]["input_schema"] = strict
    service["linked"]["input_schema"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"applicant": {"type": "string"}},
    }
    service["linked"]["parts"]["a"]["input"] = {"applicant": "data.applicant", "note": "data.x"}
    service["linked"]["parts"]["b"]["input"] = {"applicant": "data.applicant"}
    with pytest.raises(ValidationError) as caught:
        ServiceSettings.model_validate(service)
    message = str(caught.value)
    assert "linked.parts.a.input.note: not a field of operation input schema" in message
    assert "'data.x' is not a field of linked.input_schema" in message
    assert "linked.parts.b.input: the operation's input requires 'filing_number': map it" in (
        message
    )


def test_an_undo_that_cannot_be_resent_is_refused() -> None:
    service = linked_service([PartSpec("a"), PartSpec("b")])
    service["operations"]["undo"]["retry"] = "never"
    with pytest.raises(ValidationError, match="an undo must be safe to send again"):
        ServiceSettings.model_validate(service)


async def test_intake_checks_the_application_and_each_first_part(
    store: CaseStore, tmp_path: Path
) -> None:
    rig = make_rig(store, tmp_path, HOME, ScriptedSystem())
    body = {
        "service": "linked",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "test",
        "data": {"applicant": "A"},
    }
    with pytest.raises(ValidationFailed) as caught:
        await rig.service.submit(CITIZEN, body, idempotency_key="key-linked-02")
    assert caught.value.extra["errors"] == [
        {"path": "/handling_province", "message": "declared by the service"}
    ]
    assert (await store.counts()).by_status == {}
