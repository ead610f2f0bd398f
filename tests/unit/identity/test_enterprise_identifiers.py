"""Enterprise identifiers by kind: GB 32100 credit codes, and the 15-digit business registration
numbers (工商注册号) of enterprises registered before 2015, admitted per platform with their own
check while the ID-number check stays on."""

from __future__ import annotations

from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.citizen import ClaimMapping, LevelRule, MappingError, ValueRule, map_claims
from gateway.identity.identifiers import (
    make_credit_code,
    make_registration_number,
    registration_number_check,
    valid_registration_number,
)
from gateway.identity.legacy_face import identity_attributes

AGENT_ID = "610102199802030467"  # valid GB 11643 check character (the README's example)


def iso7064_mod11_10_valid(number: str) -> bool:
    """ISO 7064 hybrid MOD 11,10, written as the standard states it: starting from P = 10, each
    digit gives S = (P + d) mod 10 (0 read as 10) and the next P = 2·S mod 11; the whole
    number is valid when the last S is 1."""

    def step(state: tuple[int, int], digit: str) -> tuple[int, int]:
        product, _ = state
        total = (product + int(digit)) % 10 or 10
        return (total * 2) % 11, total

    start: tuple[int, int] = (10, 0)
    return reduce(step, number, start)[1] == 1


@given(st.from_regex(r"\A[1-9][0-9]{13}\Z"))
def test_the_check_digit_is_the_one_iso_7064_accepts(first14: str) -> None:
    number = first14 + registration_number_check(first14)
    assert iso7064_mod11_10_valid(number)
    others = [first14 + str(d) for d in range(10) if str(d) != number[-1]]
    assert not any(iso7064_mod11_10_valid(other) for other in others)


def test_published_sample_and_refusals() -> None:
    assert valid_registration_number("110108000000016")  # a widely published sample
    assert not valid_registration_number("110108000000017")
    assert not valid_registration_number("11010800000001")  # 14 digits
    assert not valid_registration_number("91610131MA6W8Q2X1X")


MAPPING = ClaimMapping(
    user_id="agent.userId",
    person_type=ValueRule(claim="usertype", map={"2": "legal"}, default="legal"),
    credit_code="uniscid",
    org_id_kinds=("credit_code", "registration_number"),
    agent_id_number="agent.idNumber",
    level=LevelRule(claim="realLevel", scale="zhejiang-reallevel", map={"1": "LP", "2": "LP"}),
)


def claims(org: str, agent_id: str = AGENT_ID) -> dict[str, object]:
    return {
        "usertype": "2",
        "uniscid": org,
        "realLevel": "1",
        "agent": {"userId": "agent-9", "idNumber": agent_id},
    }


def link(id_type: str, number: str) -> str:
    return f"link-{id_type}-{number[-4:]}"


def test_a_pre_2015_enterprise_signs_in_with_its_registration_number() -> None:
    number = make_registration_number("61010320080000")
    identity = map_claims("shaanxi-legal", MAPPING, claims(number), linker=link)
    assert (identity.credit_code, identity.registration_number) == (None, number)
    assert identity.level == "LP"
    assert identity.local_id == f"legal:reg:{number}:link-111-0467"
    released = identity_attributes(identity)
    assert released["regno"] == number
    assert "uniscid" not in released


def test_a_credit_code_is_still_a_credit_code() -> None:
    code = make_credit_code("91610131MA6W8Q2X1")
    identity = map_claims("shaanxi-legal", MAPPING, claims(code), linker=link)
    assert (identity.credit_code, identity.registration_number) == (code, None)
    assert identity.local_id == f"legal:{code}:link-111-0467"


@pytest.mark.parametrize(
    ("org", "agent_id", "reason"),
    [
        ("110108000000017", AGENT_ID, "fails the registration-number check"),
        ("91610131MA6W8Q2X10", AGENT_ID, "fails the GB 32100 check"),
        # The ID-number check stays on for the agent of a legacy enterprise.
        ("110108000000016", AGENT_ID[:17] + "0", "fails the GB 11643 check"),
    ],
)
def test_each_kind_keeps_its_check(org: str, agent_id: str, reason: str) -> None:
    with pytest.raises(MappingError, match=reason):
        map_claims("shaanxi-legal", MAPPING, claims(org, agent_id))


def test_a_platform_that_does_not_admit_them_refuses_registration_numbers() -> None:
    strict = MAPPING.model_copy(update={"org_id_kinds": ("credit_code",)})
    with pytest.raises(MappingError, match="GB 32100"):
        map_claims("shaanxi-legal", strict, claims("110108000000016"))
