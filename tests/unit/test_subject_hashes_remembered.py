"""A person the subject keys remember gives what the keys compute afresh: the same person key
(audit records, the comparison with the caller), the same province hashes (identity
assertions, the call context's subject hashes), for every ID type and province; found by a
keyed digest only (never the number's text), bounded, and never across a change of keys."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from gateway.consent.contract import DataSubject
from gateway.identity import subject_keys
from gateway.identity.citizen import natural_person_id
from gateway.identity.identifiers import link_keyer
from gateway.identity.person_key import PersonKeys
from gateway.identity.subject_keys import SubjectKeys, province_key, province_person_hash
from gateway.principal import Principal
from gateway.subject_config import SubjectField
from gateway.subjects import RefusingConsentBook, SubjectRule

PAIRWISE = SecretStr("test-pairwise-secret-0123456789abcdef")
LINK = SecretStr("test-link-secret-0123456789abcdef0123")
OTHER_LINK = SecretStr("test-link-secret-rotated-9876543210ab")
HOLDER = "610102199001011234"
DECLARATION = (SubjectField(person="holder_id", id_type="id_type"),)


def _afresh_key(number: str, id_type: str = "111", link: SecretStr = LINK) -> str:
    linked = link_keyer(link.get_secret_value())(id_type, number)
    return PersonKeys(PAIRWISE).person_key(natural_person_id(linked))


def _afresh_hash(number: str, province: str, id_type: str = "111", link: SecretStr = LINK) -> str:
    return province_person_hash(province_key(link.get_secret_value(), province), id_type, number)


async def _binding(rule: SubjectRule, number: str, id_type: str) -> object:
    keys = rule.keys
    assert keys is not None
    principal = Principal("ps-1", "L2", "portal", person=keys.person(number, id_type).key)
    data = {"holder_id": number, "id_type": id_type}
    named = rule.named(DECLARATION, data, None)
    return await rule.check(
        principal, DECLARATION, named, consent=(), service="s", operation="op", purpose="p"
    )


@pytest.mark.parametrize("link", [LINK, OTHER_LINK])
async def test_the_remembered_hashes_are_the_ones_computed_afresh(link: SecretStr) -> None:
    rule = SubjectRule(
        SubjectKeys(pairwise_secret=PAIRWISE, link_secret=link), RefusingConsentBook()
    )
    for _ in range(3):  # the first round fills the memory, the next ones read it
        for number, id_type in ((HOLDER, "111"), (HOLDER, "414"), ("61010219900101123X", "111")):
            binding = await _binding(rule, number, id_type)
            subject = DataSubject("person", _afresh_key(number, id_type, link))
            assert binding.subjects == (subject,)  # type: ignore[attr-defined]
            assert binding.audit_extra() == {"subjects": [subject.key]}  # type: ignore[attr-defined]
            for province in ("61", "44", "11"):
                asserted = binding.assertion_subjects(rule.keys, province)  # type: ignore[attr-defined]
                wanted = _afresh_hash(number, province, id_type, link)
                assert asserted == [{"type": "person", "hash": wanted}]
    # A number written in another case or with spaces is the same person, as the link key reads it.
    keys = rule.keys
    assert keys is not None
    assert keys.person(f" {HOLDER.lower()} ") == keys.person(HOLDER)


def test_a_change_of_keys_is_never_answered_from_memory() -> None:
    """Two key sets for one number (a rotation is a new ``SubjectKeys``): each answers with its
    own keys however warm the other, and their memories share nothing."""
    before = SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK)
    after = SubjectKeys(pairwise_secret=PAIRWISE, link_secret=OTHER_LINK)
    for _ in range(2):
        assert before.person(HOLDER).key == _afresh_key(HOLDER)
        assert after.person(HOLDER).key == _afresh_key(HOLDER, link=OTHER_LINK)
        assert before.person(HOLDER) != after.person(HOLDER)
        known_before = before.known_person(HOLDER)
        known_after = after.known_person(HOLDER)
        assert known_before.province_hash(before.province_mac("61"), "111", HOLDER) == (
            _afresh_hash(HOLDER, "61")
        )
        assert known_after.province_hash(after.province_mac("61"), "111", HOLDER) == (
            _afresh_hash(HOLDER, "61", link=OTHER_LINK)
        )
    assert not set(before._known) & set(after._known)  # digests under each one's own key


def test_the_memory_is_bounded_and_holds_no_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subject_keys, "_PERSONS_KEPT", 8)
    keys = SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK)
    mac = keys.province_mac("61")
    for n in range(30):
        number = f"6101021990010{n:05d}"
        known = keys.known_person(number)
        assert known.subject.key == _afresh_key(number)
        assert known.province_hash(mac, "111", number) == _afresh_hash(number, "61")
        assert len(keys._known) <= 8
        for seen, kept in keys._known.items():
            assert type(seen) is bytes
            assert len(seen) == 16
            assert number.encode() not in seen
            assert number not in repr(kept)
            assert all(number not in value for value in kept.hashes.values())


def test_a_province_key_given_as_bytes_is_hashed_afresh() -> None:
    """The remembered hashes are kept per keyed MAC object; a raw key still gives its hash."""
    rule = SubjectRule(
        SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK), RefusingConsentBook()
    )
    named = rule.named(DECLARATION, {"holder_id": HOLDER, "id_type": "111"}, None)
    raw = province_key(LINK.get_secret_value(), "44")
    assert named[0].province_hash(raw) == _afresh_hash(HOLDER, "44")
