"""补齐补正 as pure logic: the state machine's moves, reading a request, checking and planning a
supplement, replaying its dead letter; nothing is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.cases.intake import _submit_operation, build_new_case
from gateway.cases.lifecycle import plan_replay, plan_step
from gateway.cases.model import (
    TRANSITIONS,
    Case,
    CaseStatus,
    MaterialRef,
    Mode,
    Part,
    PartStatus,
    Supplement,
    SupplementRequest,
    check_transition,
    delivery_key,
    supplement_key,
)
from gateway.cases.store import EntryKind, OutboxEntry, PartChange
from gateway.cases.supplements import (
    SupplementDraft,
    build_supplement,
    check_envelope,
    plan_supplement,
    read_request,
    requested_supplement,
    supplement_input,
)
from gateway.catalog import Catalog
from gateway.errors import GatewayError
from gateway.principal import Principal
from gateway.settings import ServiceSettings
from tests.unit.cases.catalog_fixtures import SERVICE, build_catalog

S = CaseStatus
P = PartStatus
AT = "2026-11-28T08:00:00.000Z"
DIGEST = "sha256:" + "c" * 64
PHOTO = {"code": "photo", "ref": "urn:upload:photo-2", "digest": DIGEST}
ASKED = SupplementRequest(("photo",), "照片不清晰 / the photo is unreadable", "2026-12-10", AT)


def case_with(
    *statuses: PartStatus,
    status: CaseStatus = S.SUPPLEMENT_REQUESTED,
    mode: Mode = Mode.ONLINE,
    asked: SupplementRequest | None = ASKED,
    supplements: tuple[Supplement, ...] = (),
) -> Case:
    return Case(
        case_id="TB6320261128ABCDEF012345",
        service="filing",
        mode=mode,
        subject="citizen-a",
        owner="citizen-a",
        actor=None,
        actor_role=None,
        client_id="portal-63",
        level="L3",
        receiving_province="63",
        purpose="test",
        authorisation_ref=None,
        idempotency_key="key-00000001",
        body_digest=DIGEST,
        status=status,
        version=4,
        created_at=AT,
        updated_at=AT,
        materials=(MaterialRef("id-card", "urn:elicence:1", DIGEST),),
        parts=tuple(
            Part(
                n,
                ("61", "62")[n % 2],
                "apply",
                f"sys-{('61', '62')[n % 2]}",
                st,
                {"ref": f"R-{n}"},
                supplement=asked if st == P.SUPPLEMENT_REQUESTED else None,
            )
            for n, st in enumerate(statuses)
        ),
        data={"n": 1},
        supplements=supplements,
    )


def draft(body: dict[str, Any], key: str = "supp-00000001") -> SupplementDraft:
    return check_envelope(body, key)


def refusal(catalog: Catalog, case: Case, body: dict[str, Any]) -> str:
    with pytest.raises(GatewayError) as caught:
        build_supplement(catalog, case, draft(body), actor="citizen-a", at=AT)
    return caught.value.code


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return build_catalog(tmp_path)[0]


# --- the state machine --------------------------------------------------------------------------


def test_a_supplement_takes_the_case_in_again_and_other_parts_still_count() -> None:
    for target in (S.RECEIVED, S.FORWARDED, S.NOT_ACCEPTED, S.RETURNED, S.DEAD_LETTERED):
        check_transition(S.SUPPLEMENT_REQUESTED, target)
    check_transition(S.DEAD_LETTERED, S.SUPPLEMENT_REQUESTED)  # a joint case's replay
    assert S.PROCESSING not in TRANSITIONS[S.SUPPLEMENT_REQUESTED]  # 办件转办 first


def test_a_single_part_supplement_is_received_again_with_its_entry_and_events(
    catalog: Catalog,
) -> None:
    case = case_with(P.SUPPLEMENT_REQUESTED)
    supplement = build_supplement(
        catalog, case, draft({"materials": [PHOTO]}), actor="citizen-a", at=AT
    )
    step = plan_supplement(case, supplement, at=AT, now=50.0)
    assert step.status == S.RECEIVED
    assert step.parts == (PartChange(0, P.PENDING),)
    assert step.supplement == supplement
    assert [(e.kind, e.part, e.payload) for e in step.schedule] == [
        (EntryKind.SUPPLEMENT, 0, {"supplement": 1})
    ]
    (line,) = step.transitions
    assert (line.from_status, line.to_status, line.part_status) == (
        S.SUPPLEMENT_REQUESTED,
        S.RECEIVED,
        P.PENDING,
    )
    assert line.actor == "citizen-a"
    assert "supplement #1" in (line.reason or "")
    assert [e.type for e in step.events] == ["case_status_changed", "case_supplement_received"]
    assert step.events[-1].detail == {"part": 0, "sequence": 1, "materials": ["photo"]}
    assert step.expected_version == case.version


def test_a_window_case_is_received_again_not_originals_checked(catalog: Catalog) -> None:
    case = case_with(P.SUPPLEMENT_REQUESTED, mode=Mode.PROXY)
    supplement = build_supplement(catalog, case, draft({"materials": [PHOTO]}), actor="c", at=AT)
    assert plan_supplement(case, supplement, at=AT, now=1.0).status == S.RECEIVED


def test_a_joint_case_waits_as_forwarded_while_the_other_part_goes_on(catalog: Catalog) -> None:
    case = case_with(P.PROCESSING, P.SUPPLEMENT_REQUESTED)
    supplement = build_supplement(catalog, case, draft({"materials": [PHOTO]}), actor="c", at=AT)
    assert supplement.part == 1
    step = plan_supplement(case, supplement, at=AT, now=1.0)
    assert step.status == S.FORWARDED
    # Both parts asked: the case still waits for the other part's supplement.
    both = case_with(P.SUPPLEMENT_REQUESTED, P.SUPPLEMENT_REQUESTED)
    first = build_supplement(
        catalog, both, draft({"part": 0, "materials": [PHOTO]}), actor="c", at=AT
    )
    step = plan_supplement(both, first, at=AT, now=1.0)
    assert step.status == S.SUPPLEMENT_REQUESTED
    assert [e.type for e in step.events] == ["case_supplement_received"]


def test_sequences_count_per_case_and_extend_the_delivery_key(catalog: Catalog) -> None:
    earlier = Supplement(1, 0, "supp-earlier-1", DIGEST, (), None, "c", AT)
    case = case_with(P.SUPPLEMENT_REQUESTED, supplements=(earlier,))
    supplement = build_supplement(catalog, case, draft({"materials": [PHOTO]}), actor="c", at=AT)
    assert supplement.sequence == 2
    assert case.supplements_of(0) == 1
    key = supplement_key(case.case_id, 0, 2)
    assert key == delivery_key(case.case_id, 0) + ".s2"
    assert key != supplement_key(case.case_id, 0, 1) != delivery_key(case.case_id, 0)


def test_a_dead_supplement_is_replayed_to_pending() -> None:
    case = case_with(P.DEAD_LETTERED, status=S.DEAD_LETTERED)
    dead = OutboxEntry(7, case.case_id, 0, EntryKind.SUPPLEMENT, "dead", 3, 3, 1.0, {}, "x", AT)
    step = plan_replay(case, [dead], at=AT, now=2.0, actor="ops-1")
    assert step.parts == (PartChange(0, P.PENDING),)
    assert step.revive == (7,)
    assert step.status == S.RECEIVED


def test_a_joint_replay_may_return_to_waiting_for_a_supplement() -> None:
    case = case_with(P.SUPPLEMENT_REQUESTED, P.DEAD_LETTERED, status=S.DEAD_LETTERED)
    dead = OutboxEntry(8, case.case_id, 1, EntryKind.DELIVER, "dead", 3, 3, 1.0, None, "x", AT)
    assert plan_replay(case, [dead], at=AT, now=2.0, actor="o").status == S.SUPPLEMENT_REQUESTED


def test_an_answer_asking_for_a_supplement_tells_the_applicant() -> None:
    case = case_with(P.FORWARDED, status=S.FORWARDED)
    step = plan_step(
        case,
        [PartChange(0, P.SUPPLEMENT_REQUESTED, supplement=ASKED)],
        at=AT,
        now=1.0,
    )
    assert step.status == S.SUPPLEMENT_REQUESTED
    asked = [e for e in step.events if e.type == "case_supplement_requested"]
    assert [e.detail for e in asked] == [
        {"part": 0, "materials": ["photo"], "message": ASKED.message, "deadline": "2026-12-10"}
    ]


# --- reading what was asked ---------------------------------------------------------------------


def test_a_request_is_read_from_the_configured_field(catalog: Catalog) -> None:
    config = catalog.route("filing", "apply", "63", "61").operation.case
    answer = {
        "status": "SUP",
        "supplement": {
            "materials": ["photo", {"code": "household-register"}, "photo", 7, ""],
            "message": "请补充材料",
            "deadline": "2026-12-10T17:00:00+08:00",
        },
    }
    asked = requested_supplement(answer, config, AT)
    assert asked.materials == ("photo", "household-register")
    assert (asked.message, asked.deadline, asked.requested_at) == (
        "请补充材料",
        "2026-12-10T17:00:00+08:00",
        AT,
    )
    assert requested_supplement({"status": "SUP"}, config, AT) == SupplementRequest(
        (), None, None, AT
    )
    assert requested_supplement(answer, None, AT).materials == ()


def test_a_badly_described_request_keeps_what_can_be_read() -> None:
    asked = read_request({"materials": "photo", "message": 3, "deadline": "x" * 100}, AT)
    assert asked == SupplementRequest((), None, "x" * 40, AT)
    assert read_request(None, AT) == SupplementRequest((), None, None, AT)


# --- checking a supplement (validated like an application's materials) --------------------------


def test_a_good_supplement_names_the_part_and_its_materials(catalog: Catalog) -> None:
    case = case_with(P.SUPPLEMENT_REQUESTED)
    body = {"materials": [PHOTO], "note": "新照片"}
    supplement = build_supplement(catalog, case, draft(body), actor="clerk-7", at=AT)
    assert (supplement.sequence, supplement.part, supplement.actor) == (1, 0, "clerk-7")
    assert supplement.materials == (MaterialRef("photo", PHOTO["ref"], DIGEST),)
    assert supplement.note == "新照片"
    assert supplement.idempotency_key == "supp-00000001"
    assert (
        supplement.body_digest
        == check_envelope({"note": "新照片", "materials": [PHOTO]}, "k" * 8).digest
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"materials": [{**PHOTO, "digest": "md5:00"}]}, "client.materials_invalid"),
        ({"materials": [{**PHOTO, "digest": "sha256:" + "C" * 64}]}, "client.materials_invalid"),
        ({"materials": [{**PHOTO, "ref": "file:///etc/passwd"}]}, "client.materials_invalid"),
        ({"materials": [{**PHOTO, "code": "cv"}]}, "client.materials_invalid"),
        ({"materials": [{**PHOTO, "code": "id-card"}]}, "client.materials_invalid"),  # no photo
        ({"materials": [PHOTO, PHOTO]}, "client.materials_invalid"),
        ({"part": 1, "materials": [PHOTO]}, "client.case_not_awaiting_supplement"),
    ],
)
def test_bad_supplements_are_refused(catalog: Catalog, body: dict[str, Any], code: str) -> None:
    assert refusal(catalog, case_with(P.SUPPLEMENT_REQUESTED), body) == code


def test_a_material_the_back_end_names_is_accepted_though_not_in_the_catalogue(
    catalog: Catalog,
) -> None:
    asked = SupplementRequest(("guardian-certificate",), None, None, AT)
    case = case_with(P.SUPPLEMENT_REQUESTED, asked=asked)
    given = {**PHOTO, "code": "guardian-certificate"}
    supplement = build_supplement(catalog, case, draft({"materials": [given]}), actor="c", at=AT)
    assert [m.code for m in supplement.materials] == ["guardian-certificate"]
    assert refusal(catalog, case, {"materials": [PHOTO]}) == "client.materials_invalid"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"materials": [PHOTO]}, None),
        ({"materials": [PHOTO]}, "short"),
        ({"materials": []}, "supp-00000001"),
        ({"materials": [PHOTO], "data": {"x": 1}}, "supp-00000001"),
        ({"materials": [PHOTO], "part": -1}, "supp-00000001"),
        ({}, "supp-00000001"),
    ],
)
def test_a_bad_envelope_or_key_is_refused_before_the_case_is_looked_at(
    body: dict[str, Any], key: str | None
) -> None:
    with pytest.raises(GatewayError) as caught:
        check_envelope(body, key)
    expected = (
        "client.validation_failed" if key and len(key) >= 8 else "client.idempotency_key_missing"
    )
    assert caught.value.code == expected


@pytest.mark.parametrize(
    "case",
    [
        case_with(P.PROCESSING, status=S.PROCESSING),
        case_with(P.PENDING, status=S.RECEIVED),
        case_with(P.SUPPLEMENT_REQUESTED, status=S.CLOSED),
        case_with(P.DONE, P.DONE, status=S.CLOSED),
    ],
)
def test_only_a_waiting_case_takes_a_supplement(catalog: Catalog, case: Case) -> None:
    assert refusal(catalog, case, {"materials": [PHOTO]}) == "client.case_not_awaiting_supplement"


def test_with_several_parts_waiting_the_supplement_names_one(catalog: Catalog) -> None:
    case = case_with(P.SUPPLEMENT_REQUESTED, P.SUPPLEMENT_REQUESTED)
    assert refusal(catalog, case, {"materials": [PHOTO]}) == "client.validation_failed"
    named = build_supplement(
        catalog, case, draft({"part": 1, "materials": [PHOTO]}), actor="c", at=AT
    )
    assert named.part == 1


def test_the_supplement_input_carries_the_answer_fields_and_materials(catalog: Catalog) -> None:
    case = case_with(P.SUPPLEMENT_REQUESTED)
    config = catalog.route("filing", "apply", "63", "61").operation.case
    assert config is not None
    supplement = build_supplement(
        catalog, case, draft({"materials": [PHOTO], "note": "n"}), actor="c", at=AT
    )
    assert supplement_input(config, case.part(0), supplement) == {
        "ref": "R-0",
        "sequence": 1,
        "materials": [PHOTO],
        "note": "n",
    }


# --- the catalogue: a supplement operation is never a case of its own --------------------------


def test_a_supplement_operation_is_not_a_submission(catalog: Catalog) -> None:
    body = {
        "service": "filing",
        "operation": "supplement",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "test",
        "data": {"n": 1},
        "materials": [{"code": "id-card", "ref": "urn:elicence:1", "digest": DIGEST}],
    }
    citizen = Principal("citizen-a", "L3", "portal-63")
    with pytest.raises(GatewayError) as caught:
        build_new_case(catalog, citizen, body, idempotency_key="key-00000001")
    assert caught.value.code == "client.not_a_submission"


def test_the_only_submission_is_found_beside_its_supplement_operation(catalog: Catalog) -> None:
    operations = {
        k: v for k, v in SERVICE["operations"].items() if k not in ("apply-once", "supplement-once")
    }
    services = {"filing": ServiceSettings.model_validate({**SERVICE, "operations": operations})}
    lone = Catalog(services, catalog.routes, {})
    assert _submit_operation(lone, "filing", None) == "apply"


def test_supplement_with_must_name_another_submit_operation() -> None:
    def broken(ref: str) -> dict[str, Any]:
        apply = SERVICE["operations"]["apply"]
        return {
            **SERVICE,
            "operations": {
                **SERVICE["operations"],
                "apply": {**apply, "case": {**apply["case"], "supplement_with": ref}},
            },
        }

    for ref, message in (
        ("nope", "no operation 'nope'"),
        ("status", "'status' is not another submit operation"),
        ("apply", "'apply' is not another submit operation"),
        ("apply-once", "'apply-once' has a case block of its own"),
    ):
        with pytest.raises(ValidationError) as caught:
            ServiceSettings.model_validate(broken(ref))
        assert f"case.supplement_with: {message}" in str(caught.value)
