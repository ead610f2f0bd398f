"""An enterprise the subject keys remember gives what the keys compute afresh: the same
enterprise key (audit records, the comparison with a legal person's operator), the same
province hashes (identity assertions, the call context's subject hashes), for credit codes and
registration numbers in any spelling ``org_id`` reads alike; found by a keyed digest only
(never the identifier's text), bounded, apart from the persons' memory, and never across a
change of keys."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import SecretStr

from gateway.consent.contract import DataSubject
from gateway.errors import NotDataSubject
from gateway.identity import subject_keys
from gateway.identity.subject_keys import (
    KnownEnterprise,
    SubjectKeys,
    _derive,
    org_id,
    province_enterprise_hash,
    province_key,
    province_person_hash,
)
from gateway.principal import Principal
from gateway.subject_config import SubjectField
from gateway.subjects import RefusingConsentBook, SubjectRule

PAIRWISE = SecretStr("test-pairwise-secret-0123456789abcdef")
OTHER_PAIRWISE = SecretStr("test-pairwise-secret-rotated-987654321")
LINK = SecretStr("test-link-secret-0123456789abcdef0123")
OTHER_LINK = SecretStr("test-link-secret-rotated-9876543210ab")
CODE = "91610113MA6TXXXX0Q"
OTHER_CODE = "91440300MA5FXXXX1K"
REGISTRATION = "610000100012345"
DECLARATION = (SubjectField(enterprise="credit_code"),)
TWO = (SubjectField(enterprise="seller"), SubjectField(enterprise="buyer"))


def _afresh_key(identifier: str, pairwise: SecretStr = PAIRWISE) -> str:
    """The enterprise key as the module docstring defines it, without ``SubjectKeys``."""
    key = _derive(pairwise.get_secret_value().encode(), b"tongban enterprise subject key v1")
    raw = hmac.digest(key, org_id(identifier).encode(), "sha256")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _afresh_hash(identifier: str, province: str, link: SecretStr = LINK) -> str:
    return province_enterprise_hash(province_key(link.get_secret_value(), province), identifier)


def _operator(keys: SubjectKeys, identifier: str) -> Principal:
    return Principal("ps-1", "LP", "portal", enterprise=keys.enterprise(identifier).key)


@pytest.mark.parametrize(("pairwise", "link"), [(PAIRWISE, LINK), (OTHER_PAIRWISE, OTHER_LINK)])
async def test_the_remembered_keys_and_hashes_are_the_ones_computed_afresh(
    pairwise: SecretStr, link: SecretStr
) -> None:
    keys = SubjectKeys(pairwise_secret=pairwise, link_secret=link)
    rule = SubjectRule(keys, RefusingConsentBook())
    for _ in range(3):  # the first round fills the memory, the next ones read it
        for identifier in (CODE, OTHER_CODE, REGISTRATION):
            principal = _operator(keys, identifier)
            named = rule.named(DECLARATION, {"credit_code": identifier}, None)
            binding = rule.own(principal, DECLARATION, named)
            assert binding is not None
            subject = DataSubject("enterprise", _afresh_key(identifier, pairwise))
            assert binding.subjects == (subject,)
            assert binding.audit_extra() == {"subjects": [subject.key]}
            for province in ("61", "44", "11"):
                listed, text = binding.province_subjects(keys, province)
                wanted = _afresh_hash(identifier, province, link)
                assert listed == [{"type": "enterprise", "hash": wanted}]
                assert text == f"enterprise:{wanted}"
                # A province key given as bytes is hashed afresh, to the same hash.
                raw = province_key(link.get_secret_value(), province)
                assert named[0].province_hash(raw) == wanted


async def test_the_rule_still_tells_the_operator_from_another_enterprise() -> None:
    """However warm the memory, an operator is bound to its own enterprise only: another
    enterprise named needs a grant (refused here: the book covers nothing)."""
    keys = SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK)
    rule = SubjectRule(keys, RefusingConsentBook())
    for _ in range(3):
        for own, other in ((CODE, OTHER_CODE), (OTHER_CODE, CODE), (REGISTRATION, CODE)):
            principal = _operator(keys, own)
            named = rule.named(TWO, {"seller": own, "buyer": other}, None)
            assert rule.own(principal, TWO, named) is None
            with pytest.raises(NotDataSubject):
                await rule.check(
                    principal, TWO, named, consent=(), service="s", operation="o", purpose="p"
                )
            named = rule.named(TWO, {"seller": own, "buyer": f" {own.lower()} "}, None)
            binding = rule.own(principal, TWO, named)
            assert binding is not None  # the same enterprise twice is named once
            assert binding.subjects == (DataSubject("enterprise", _afresh_key(own)),)


def test_every_spelling_org_id_reads_alike_is_one_enterprise() -> None:
    keys = SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK)
    mac = keys.province_mac("61")
    for identifier, spellings in (
        (CODE, (CODE.lower(), f"  {CODE} ", f"\t{CODE.lower()}\n")),
        (REGISTRATION, (f" {REGISTRATION}", f"{REGISTRATION}  ")),
    ):
        first = keys.known_enterprise(identifier)
        for spelling in spellings:
            known = keys.known_enterprise(spelling)
            assert known is first
            assert known.province_hash(mac, "111", spelling) == _afresh_hash(identifier, "61")
    # A registration number and a credit code that spells it otherwise are two enterprises, as
    # ``org_id`` makes them (``reg:`` marks the first).
    assert keys.enterprise(REGISTRATION) != keys.enterprise(f"REG:{REGISTRATION}")
    assert keys.enterprise(f"REG:{REGISTRATION}").key == _afresh_key(f"REG:{REGISTRATION}")


def test_persons_and_enterprises_are_remembered_apart() -> None:
    """A person's ``type|NUMBER`` comes from the request (the type too): a person whose type
    and number spell an enterprise's org id is still that person, and the enterprise still the
    enterprise, whichever was met first."""
    for enterprise_first in (True, False):
        keys = SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK)
        mac = keys.province_mac("61")
        id_type, number = "REG", REGISTRATION  # the person's "REG|610000100012345"
        for _ in range(2):
            if enterprise_first:
                enterprise = keys.known_enterprise(f"REG|{REGISTRATION}")
                person = keys.known_person(number, id_type)
            else:
                person = keys.known_person(number, id_type)
                enterprise = keys.known_enterprise(f"REG|{REGISTRATION}")
            assert type(enterprise) is KnownEnterprise
            assert type(person) is not KnownEnterprise
            assert enterprise.subject == DataSubject(
                "enterprise", _afresh_key(f"REG|{REGISTRATION}")
            )
            assert person.subject.kind == "person"
            assert person.province_hash(mac, id_type, number) == province_person_hash(
                province_key(LINK.get_secret_value(), "61"), id_type, number
            )
            assert enterprise.province_hash(mac, "111", f"REG|{REGISTRATION}") == (
                _afresh_hash(f"REG|{REGISTRATION}", "61")
            )
        assert len(keys._known) == 1
        assert len(keys._known_enterprises) == 1


def test_a_change_of_keys_is_never_answered_from_memory() -> None:
    before = SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK)
    after = SubjectKeys(pairwise_secret=OTHER_PAIRWISE, link_secret=OTHER_LINK)
    for _ in range(2):
        assert before.enterprise(CODE).key == _afresh_key(CODE)
        assert after.enterprise(CODE).key == _afresh_key(CODE, OTHER_PAIRWISE)
        assert before.known_enterprise(CODE).province_hash(
            before.province_mac("61"), "111", CODE
        ) == _afresh_hash(CODE, "61")
        assert after.known_enterprise(CODE).province_hash(
            after.province_mac("61"), "111", CODE
        ) == _afresh_hash(CODE, "61", OTHER_LINK)
    assert not set(before._known_enterprises) & set(after._known_enterprises)


def test_the_memory_is_bounded_and_holds_no_identifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subject_keys, "_PERSONS_KEPT", 8)
    keys = SubjectKeys(pairwise_secret=PAIRWISE, link_secret=LINK)
    mac = keys.province_mac("61")
    for n in range(30):
        identifier = f"91610113MA6T{n:05d}Q"
        known = keys.known_enterprise(identifier)
        assert known.subject.key == _afresh_key(identifier)
        assert known.province_hash(mac, "111", identifier) == _afresh_hash(identifier, "61")
        assert len(keys._known_enterprises) <= 8
        for seen, kept in keys._known_enterprises.items():
            assert type(seen) is bytes
            assert len(seen) == 16
            assert identifier.encode() not in seen
            assert hashlib.sha256(identifier.encode()).digest()[:16] != seen
            assert identifier not in repr(kept)
            assert all(identifier not in value for value in kept.hashes.values())
    assert not keys._known  # no person was named
