"""The subject rule's per-call shortcuts change no answer: a person's key remembered by its
link key is the key computed afresh, bounded, never keyed by the number; the caller is still
told from everyone else (kind and key), a repeated subject still named once, and a second
caller naming the first one's number still refused."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from gateway.consent.contract import DataSubject
from gateway.errors import NotDataSubject
from gateway.identity import subject_keys
from gateway.identity.citizen import natural_person_id
from gateway.identity.identifiers import link_keyer
from gateway.identity.person_key import PersonKeys
from gateway.identity.subject_keys import SubjectKeys
from gateway.principal import Principal
from gateway.subject_config import SubjectField
from gateway.subjects import RefusingConsentBook, SubjectRule, principal_subject

PAIRWISE = SecretStr("test-pairwise-secret-0123456789abcdef")
LINK = SecretStr("test-link-secret-0123456789abcdef0123")
HOLDER = "610102199001011234"
OTHER = "61010219900101123X"


def _keys() -> SubjectKeys:
    return SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK)


def _afresh(number: str, id_type: str = "111") -> str:
    link = link_keyer(LINK.get_secret_value())(id_type, number)
    return PersonKeys(PAIRWISE).person_key(natural_person_id(link))


def test_a_remembered_person_key_is_the_one_computed_afresh() -> None:
    keys = _keys()
    for _ in range(3):
        assert keys.person(HOLDER) == DataSubject("person", _afresh(HOLDER))
        assert keys.person(OTHER) == DataSubject("person", _afresh(OTHER))
        assert keys.person(HOLDER, "414") == DataSubject("person", _afresh(HOLDER, "414"))
    assert keys.person(f" {HOLDER.lower()} ") == keys.person(HOLDER)  # as the link key reads it
    assert len({keys.person(HOLDER), keys.person(OTHER), keys.person(HOLDER, "414")}) == 3


def test_person_keys_remembered_are_bounded_and_never_keyed_by_the_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(subject_keys, "_PERSONS_KEPT", 8)
    keys = _keys()
    for n in range(30):
        number = f"6101021990010{n:05d}"
        assert keys.person(number).key == _afresh(number)
        remembered = keys._known
        assert len(remembered) <= 8
        assert not any(number.encode() in seen for seen in remembered)


def _rule() -> SubjectRule:
    return SubjectRule(_keys(), RefusingConsentBook())


DECLARATION = (SubjectField(person="holder_id"),)


async def _bind(rule: SubjectRule, principal: Principal, data: dict[str, object]) -> object:
    named = rule.named(DECLARATION, data, None)
    return await rule.check(
        principal, DECLARATION, named, consent=(), service="s", operation="op", purpose="p"
    )


async def test_the_caller_is_still_told_from_someone_else_after_many_calls() -> None:
    rule = _rule()
    keys = rule.keys
    assert keys is not None
    holder = Principal("ps-1", "L2", "portal", person=keys.person(HOLDER).key)
    other = Principal("ps-2", "L2", "portal", person=keys.person(OTHER).key)
    for _ in range(3):
        binding = await _bind(rule, holder, {"holder_id": HOLDER})
        assert binding.subjects == (keys.person(HOLDER),)  # type: ignore[attr-defined]
        with pytest.raises(NotDataSubject):
            await _bind(rule, other, {"holder_id": HOLDER})
    # An enterprise's operator and a machine client are not the person, whatever the key.
    enterprise = Principal("ps-3", "LP", "portal", enterprise=keys.person(HOLDER).key)
    machine = Principal("ps-4", "system", "portal", person=keys.person(HOLDER).key)
    for principal in (enterprise, machine):
        with pytest.raises(NotDataSubject):
            await _bind(rule, principal, {"holder_id": HOLDER})
    assert principal_subject(enterprise) == DataSubject("enterprise", keys.person(HOLDER).key)
    assert principal_subject(machine) is None


async def test_a_subject_named_twice_is_named_once() -> None:
    rule = _rule()
    keys = rule.keys
    assert keys is not None
    holder = Principal("ps-1", "L2", "portal", person=keys.person(HOLDER).key)
    twice = (SubjectField(person="a"), SubjectField(person="b"), SubjectField(person="c"))
    data = {"a": HOLDER, "b": HOLDER.lower(), "c": HOLDER}
    named = rule.named(twice, data, None)
    assert [n.subject for n in named] == [keys.person(HOLDER)]
    binding = await rule.check(
        holder, twice, named, consent=(), service="s", operation="op", purpose="p"
    )
    assert binding.subjects == (keys.person(HOLDER),)
