"""Subject keys: the rule's keys equal the signed-in person's and the operator's enterprise's,
the enterprise key travels sealed, and a province computes the assertion's hashes itself."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import sys

import pytest
from pydantic import SecretStr

from gateway.cli import main
from gateway.consent.contract import DataSubject
from gateway.identity.citizen import ClaimMapping, LevelRule, map_claims
from gateway.identity.identifiers import KeyedSha256, link_keyer
from gateway.identity.person_key import PERSON_CLAIM
from gateway.identity.subject_keys import (
    ENTERPRISE_CLAIM,
    SubjectKeys,
    province_enterprise_hash,
    province_key,
    province_person_hash,
)
from gateway.subject_config import SubjectField
from gateway.subjects import Named, named_subjects, principal_subject
from tests.unit.identity.test_person_key import (
    QH,
    SECRET,
    SYSTEM,
    _access_token,
    _claims,
    _provider,
    _resigned,
    _user,
)

LINK = SecretStr("link-secret-for-subject-key-tests-0123456789")
KEYS = SubjectKeys(pairwise_secret=SECRET, link_secret=LINK)
SU = "610102199802030463"
CODE = "91610113MA6TXXXX0Q"


def _signed_in(person_type: str, **claims: str) -> str:
    mapping = ClaimMapping(
        id_number="idcard",
        credit_code="uscc",
        agent_id_number="agent",
        person_type={"claim": "kind"},
        level=LevelRule(scale="test", map={"3": "L3"}),
        check_digits=False,
    )
    identity = map_claims(
        "test-idp",
        mapping,
        {"sub": "u1", "acr": "3", "kind": person_type, **claims},
        linker=link_keyer(LINK.get_secret_value()),
    )
    return identity.local_id


async def test_a_signed_in_persons_key_is_the_key_of_her_id_number() -> None:
    provider = _provider()
    local_id = _signed_in("natural", idcard=SU)
    principal = await provider.access_token_verifier().verify(
        _access_token(provider, QH, _user(local_id))
    )
    assert principal_subject(principal) == KEYS.person(SU)
    assert principal.enterprise is None
    assert KEYS.person("610102199802030471") != KEYS.person(SU)


async def test_an_operator_carries_the_enterprise_sealed_and_is_the_enterprise() -> None:
    provider = _provider()
    local_id = _signed_in("legal", uscc=CODE, agent=SU)
    token = _access_token(provider, QH, _user(local_id))
    claims = _claims(token)
    assert KEYS.enterprise(CODE).key not in str(claims)  # sealed, not readable by the portal
    principal = await provider.access_token_verifier().verify(token)
    assert principal.enterprise == KEYS.enterprise(CODE).key
    assert principal_subject(principal) == DataSubject("enterprise", principal.enterprise)
    # Moved into the person claim (or the other way round) it does not open.
    swapped = _resigned(
        token, **{PERSON_CLAIM: claims[ENTERPRISE_CLAIM], ENTERPRISE_CLAIM: claims[PERSON_CLAIM]}
    )
    with pytest.raises(Exception, match="not valid"):
        await provider.access_token_verifier().verify(swapped)
    # A machine client is no one's subject.
    machine = await provider.access_token_verifier().verify(_access_token(provider, SYSTEM))
    assert principal_subject(machine) is None


def test_a_province_computes_the_assertions_hashes_from_what_it_holds() -> None:
    fields = (SubjectField(person="id_number"), SubjectField(enterprise="code"))
    named = named_subjects(KEYS, fields, {"id_number": SU, "code": CODE.lower()})
    assert [n.subject for n in named] == [KEYS.person(SU), KEYS.enterprise(CODE)]
    shaanxi = province_key(LINK.get_secret_value(), "61")
    assert [n.province_hash(shaanxi) for n in named] == [
        province_person_hash(shaanxi, "111", SU),
        province_enterprise_hash(shaanxi, CODE),
    ]
    qinghai = province_key(LINK.get_secret_value(), "63")
    assert named[0].province_hash(qinghai) != named[0].province_hash(shaanxi)
    assert SU not in repr(named)
    assert isinstance(named[0], Named)
    # A registration number is its own kind of enterprise identifier.
    assert KEYS.enterprise("610000100012345").key != KEYS.enterprise(CODE).key


def test_the_cli_prints_the_key_the_province_checks_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGBAN_LINK_SECRET", LINK.get_secret_value())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["keys", "subject", "--config", "config", "--province", "61"]) == 0
    assert out.getvalue().strip() == province_key(LINK.get_secret_value(), "61").hex()
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["keys", "subject", "--config", "config", "--province", "99"]) == 1


@pytest.mark.parametrize("key_length", [0, 1, 32, 64, 65, 200])
def test_a_key_keyed_once_gives_the_bytes_of_a_fresh_hmac_every_time(key_length: int) -> None:
    key = os.urandom(key_length)
    keyed = KeyedSha256(key)
    for message in (b"", b"111|" + SU.encode(), os.urandom(300), "org|统一".encode()):
        for _ in range(2):  # the keyed state is copied, never consumed
            assert keyed.digest(message) == hmac.digest(key, message, hashlib.sha256)


def test_the_province_hashes_of_a_raw_key_and_a_keyed_one_agree() -> None:
    key = province_key(LINK.get_secret_value(), "61")
    mac = KEYS.province_mac("61")
    assert KEYS.province_mac("61") is mac
    assert province_person_hash(mac, "111", SU) == province_person_hash(key, "111", SU)
    assert province_enterprise_hash(mac, CODE) == province_enterprise_hash(key, CODE)
    assert province_person_hash(KEYS.province_mac("63"), "111", SU) != province_person_hash(
        key, "111", SU
    )


def test_without_openssls_hmac_state_the_bytes_are_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "_hashlib", None)  # as a Python built without it
    key = os.urandom(32)
    keyed = KeyedSha256(key)
    assert type(keyed._keyed) is hmac.HMAC
    for message in (b"", b"111|" + SU.encode()):
        assert keyed.digest(message) == hmac.digest(key, message, hashlib.sha256)
