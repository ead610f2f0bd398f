"""Canonical JSON and chain hashing: exact bytes, refused values, known digests."""

from __future__ import annotations

import hashlib

import pytest

from gateway.audit.canonical import (
    GENESIS_HASH,
    CanonicalError,
    canonical_bytes,
    chain_hash,
    content_digest,
    digest,
    has_canonical_encoding,
    parse_canonical,
)


def test_sorted_compact_utf8() -> None:
    value = {"b": [True, None, 1], "a": "青海", "c": {"z": 0, "y": ""}}
    assert canonical_bytes(value) == '{"a":"青海","b":[true,null,1],"c":{"y":"","z":0}}'.encode()


def test_keys_sorted_by_code_point() -> None:
    assert (
        canonical_bytes({"é": 1, "z": 2, "Z": 3, "甘": 4}) == '{"Z":3,"z":2,"é":1,"甘":4}'.encode()
    )


def test_escapes_only_what_json_requires() -> None:
    assert canonical_bytes({"s": 'a"\\\n\u0001/'}) == b'{"s":"a\\"\\\\\\n\\u0001/"}'


@pytest.mark.parametrize(
    "value",
    [
        {"f": 1.0},
        {"f": [0.5]},
        {"n": {"deep": float("nan")}},
        {"big": 2**53},
        {"small": -(2**53)},
        {1: "non-string key"},
        {"set": {1, 2}},
        {"bytes": b"x"},
        {"surrogate": "\ud800"},
    ],
)
def test_refuses_values_outside_the_subset(value: dict[object, object]) -> None:
    with pytest.raises(CanonicalError):
        canonical_bytes(value)  # type: ignore[arg-type]


def test_integer_bounds_inclusive() -> None:
    assert canonical_bytes({"i": 2**53 - 1, "j": -(2**53 - 1)}) == (
        b'{"i":9007199254740991,"j":-9007199254740991}'
    )


def test_parse_canonical_round_trip_and_rejections() -> None:
    raw = canonical_bytes({"x": "甲", "a": [1]})
    assert parse_canonical(raw) == {"a": [1], "x": "甲"}
    for bad in (b'{"x":"\\u7532","a":[1]}', b'{"a": [1]}', b"[1]", b"{", b'{"a":1.5}'):
        with pytest.raises(CanonicalError):
            parse_canonical(bad)


def test_has_canonical_encoding() -> None:
    assert has_canonical_encoding({"a": 1}, b'{"a":1}')
    assert not has_canonical_encoding({"a": 1}, b'{"a": 1}')


def test_chain_hash_is_h_of_prev_bytes_and_h_of_record() -> None:
    record = canonical_bytes({"a": 1})
    expected = hashlib.sha256(
        bytes.fromhex(GENESIS_HASH) + hashlib.sha256(record).digest()
    ).hexdigest()
    assert chain_hash("sha256", GENESIS_HASH, record) == expected


def test_sm3_known_answer() -> None:
    # GB/T 32905-2016, example 1.
    assert digest("sm3", b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )
    assert len(chain_hash("sm3", GENESIS_HASH, b"{}")) == 64
    assert chain_hash("sm3", GENESIS_HASH, b"{}") != chain_hash("sha256", GENESIS_HASH, b"{}")


def test_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        chain_hash("md5", GENESIS_HASH, b"{}")


def test_content_digest_is_labelled() -> None:
    assert content_digest("sha256", b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
