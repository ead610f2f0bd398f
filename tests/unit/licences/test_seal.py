"""The issuer's electronic seal as the gateway checks it: any change to a sealed licence's data
or seal is refused; keys rotate by key id and hold only inside their window."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.demo.licence_system import demo_seal_key
from gateway.licences.seal import (
    SealedLicence,
    SealKey,
    SealKeyRing,
    SealRefused,
    load_public_key,
    public_pem,
    seal_licence,
)

NOW = datetime(2026, 12, 6, tzinfo=UTC)
OLD = demo_seal_key("sx-seal-2025")
NEW = demo_seal_key("sx-seal-2026")


def ring(*, old_until: datetime | None = None) -> SealKeyRing:
    return SealKeyRing(
        [
            SealKey("sx-seal-2025", "ES256", OLD.public_key(), not_after=old_until),
            SealKey("sx-seal-2026", "ES256", NEW.public_key()),
        ]
    )


LICENCE: dict[str, Any] = {
    "type": "birth-medical-certificate",
    "number": "S610000102",
    "issuer": "61",
    "holder": {"idType": "111", "idNumber": "610113198503142131", "name": "马文华"},
    "fields": {"newborn_name": "马小禾", "birth_date": "2026-11-20", "weight_g": 3350},
    "issuedAt": "2026-11-28",
    "validUntil": None,
}

# JSON values a licence may hold (integers in the interoperable range, no floats).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.text(max_size=12),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    return out


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def test_a_seal_holds_under_the_current_and_the_retired_key() -> None:
    for key, kid in ((NEW, "sx-seal-2026"), (OLD, "sx-seal-2025")):
        ring().check(seal_licence(LICENCE, key, kid), NOW)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_change_to_the_data_is_refused(data: st.DataObject) -> None:
    sealed = seal_licence(LICENCE, NEW, "sx-seal-2026")
    changed = copy.deepcopy(LICENCE)
    path = data.draw(st.sampled_from(_paths(LICENCE)))
    new_value = data.draw(
        scalars.filter(
            lambda v: v != _get(LICENCE, path) or type(v) is not type(_get(LICENCE, path))
        )
    )
    _set(changed, path, new_value)
    with pytest.raises(SealRefused) as refused:
        ring().check(SealedLicence(changed, sealed.kid, sealed.alg, sealed.value), NOW)
    assert refused.value.reason == "signature_invalid"


@settings(max_examples=150)
@given(position=st.integers(0, 200), bit=st.integers(0, 7))
def test_any_change_to_the_seal_is_refused(position: int, bit: int) -> None:
    sealed = seal_licence(LICENCE, NEW, "sx-seal-2026")
    raw = bytearray(base64.b64decode(sealed.value))
    raw[position % len(raw)] ^= 1 << bit
    forged = SealedLicence(LICENCE, sealed.kid, sealed.alg, base64.b64encode(raw).decode())
    with pytest.raises(SealRefused) as refused:
        ring().check(forged, NOW)
    assert refused.value.reason in ("signature_invalid", "malformed")


@given(extra_key=st.text(min_size=1, max_size=8), value=scalars)
def test_an_added_field_is_refused(extra_key: str, value: Any) -> None:
    sealed = seal_licence(LICENCE, NEW, "sx-seal-2026")
    if extra_key in LICENCE:
        return
    with pytest.raises(SealRefused):
        ring().check(
            SealedLicence({**LICENCE, extra_key: value}, sealed.kid, sealed.alg, sealed.value), NOW
        )


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def test_a_seal_by_an_unpublished_key_or_another_key_id_is_refused() -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SealRefused) as refused:
        ring().check(seal_licence(LICENCE, stranger, "sx-seal-2027"), NOW)
    assert refused.value.reason == "unknown_key"
    # A forger who names a published key id still needs its private key.
    with pytest.raises(SealRefused) as refused:
        ring().check(seal_licence(LICENCE, stranger, "sx-seal-2026"), NOW)
    assert refused.value.reason == "signature_invalid"
    # The old key's seal presented as the new key's: refused.
    old = seal_licence(LICENCE, OLD, "sx-seal-2025")
    with pytest.raises(SealRefused):
        ring().check(SealedLicence(LICENCE, "sx-seal-2026", old.alg, old.value), NOW)


def test_a_retired_key_past_its_window_and_another_algorithm_are_refused() -> None:
    sealed = seal_licence(LICENCE, OLD, "sx-seal-2025")
    with pytest.raises(SealRefused) as refused:
        ring(old_until=NOW - timedelta(days=1)).check(sealed, NOW)
    assert refused.value.reason == "key_not_valid"
    with pytest.raises(SealRefused) as refused:
        ring().check(SealedLicence(LICENCE, sealed.kid, "SM2", sealed.value), NOW)
    assert refused.value.reason == "algorithm_mismatch"


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {"licence": LICENCE},
        {"licence": "x", "seal": {}},
        {"licence": LICENCE, "seal": {"kid": "k", "alg": "ES256"}},
        {"licence": LICENCE, "seal": {"kid": "k", "alg": "ES256", "value": 7}},
    ],
)
def test_a_malformed_answer_is_refused_as_malformed(answer: Any) -> None:
    with pytest.raises(SealRefused) as refused:
        SealedLicence.from_answer(answer)
    assert refused.value.reason == "malformed"


def test_a_seal_that_is_not_base64_or_data_with_a_float_is_malformed() -> None:
    sealed = seal_licence(LICENCE, NEW, "sx-seal-2026")
    with pytest.raises(SealRefused) as refused:
        ring().check(SealedLicence(LICENCE, sealed.kid, sealed.alg, "not base64!"), NOW)
    assert refused.value.reason == "malformed"
    with pytest.raises(SealRefused) as refused:
        ring().check(
            SealedLicence({**LICENCE, "area": 96.5}, sealed.kid, sealed.alg, sealed.value), NOW
        )
    assert refused.value.reason == "malformed"


def test_only_p256_public_keys_are_accepted() -> None:
    assert load_public_key(public_pem(NEW)).curve.name == "secp256r1"
    with pytest.raises(ValueError, match="P-256"):
        load_public_key(public_pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(ValueError, match="PEM"):
        load_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
