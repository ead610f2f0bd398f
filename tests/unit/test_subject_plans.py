"""The subject-field check works from a plan of each declaration, made once and kept.

``check_unambiguous`` splits a declaration's paths once per declaration (a tuple from the
configuration) instead of on every request. A kept plan must refuse exactly what the check
refused before: a field sent twice, or in a second spelling, on every request, whatever earlier
requests sent; a declaration built for one request (a list) is planned afresh each time.
"""

from __future__ import annotations

from typing import Any

from gateway import subjects
from gateway.errors import SubjectFieldAmbiguous
from gateway.subject_config import SubjectField
from gateway.subjects import check_unambiguous

DECLARATION = (
    SubjectField(person="seller.id_number", id_type="seller.id_type"),
    SubjectField(enterprise="credit_code"),
)


def refused_field(fields: Any, data: dict[str, Any], raw: bytes | None = None) -> str | None:
    try:
        check_unambiguous(fields, data, raw)
    except SubjectFieldAmbiguous as exc:
        return str(exc)
    return None


def test_a_kept_plan_still_refuses_a_second_spelling_after_clean_requests() -> None:
    clean = {"seller": {"id_number": "x", "id_type": "111"}, "credit_code": "c"}
    for _ in range(3):
        assert refused_field(DECLARATION, clean) is None
    assert id(DECLARATION) in subjects._PLANS
    second = {"seller": {"id_number": "x", "idNumber": "y"}, "credit_code": "c"}
    assert "'id_number' is also sent as 'idNumber'" in (refused_field(DECLARATION, second) or "")
    top = {"seller": {"id_number": "x"}, "credit_code": "c", "Credit-Code": "d"}
    assert "'credit_code' is also sent as 'Credit-Code'" in (refused_field(DECLARATION, top) or "")
    typed = {"seller": {"id_number": "x", "id_type": "111", "ID_TYPE": "414"}}
    assert "'id_type' is also sent as 'ID_TYPE'" in (refused_field(DECLARATION, typed) or "")


def test_a_kept_plan_still_refuses_a_field_sent_twice_in_the_raw_body() -> None:
    raw = b'{"seller": {"id_number": "x", "id_number": "y"}, "credit_code": "c"}'
    data = {"seller": {"id_number": "y"}, "credit_code": "c"}
    assert refused_field(DECLARATION, data, b'{"seller": {"id_number": "y"}}') is None
    assert "'id_number' appears twice" in (refused_field(DECLARATION, data, raw) or "")
    escaped = b'{"seller": {"id_number": "x", "id_\\u006eumber": "y"}, "credit_code": "c"}'
    assert "'id_number' appears twice" in (refused_field(DECLARATION, data, escaped) or "")


def test_a_declaration_built_for_one_request_is_not_kept() -> None:
    fields = [SubjectField(person="id_number")]
    assert refused_field(fields, {"id_number": "x"}) is None
    assert id(fields) not in subjects._PLANS
    fields.append(SubjectField(enterprise="org.code"))  # the same list, another declaration
    assert "'code' is also sent as 'CODE'" in (
        refused_field(fields, {"id_number": "x", "org": {"code": "c", "CODE": "d"}}) or ""
    )


def test_the_kept_plans_are_bounded() -> None:
    for _ in range(subjects._MAX_PLANS + 5):
        check_unambiguous((SubjectField(person="id_number"),), {"id_number": "x"}, None)
    assert len(subjects._PLANS) <= subjects._MAX_PLANS
