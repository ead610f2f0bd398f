"""Canonical JSON and chain hashing: the only code the audit writer and the verifier share.

Canonical form (documented in docs/audit.md, stable across versions):

- UTF-8, no byte-order mark, characters never escaped beyond what JSON requires
  (``ensure_ascii`` off: 青海 stays 青海);
- object keys sorted by Unicode code point (equal to UTF-8 byte order), no duplicate keys;
- no insignificant whitespace (``{"a":1,"b":[true,null]}``);
- allowed values: objects with string keys, arrays, strings, booleans, null and integers in the
  interoperable range ±(2**53 - 1). **Floats are refused**: their text form differs between
  languages and libraries, so a verifier written elsewhere could not reproduce the bytes.
  Durations are integer milliseconds, amounts integer fen.

Strings are hashed exactly as given (no Unicode normalisation); lone surrogates are refused.

Chain rule: ``hash_n = H(bytes(prev_hash_n) || H(canonical_n))`` with ``prev_hash_1`` the
all-zero digest. ``H`` is SHA-256 (default) or SM3 (GB/T 32905); both give 32-byte digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, Protocol

import orjson
from cryptography.hazmat.primitives import hashes

HashAlg = Literal["sha256", "sm3"]
HASH_ALGS: Final[tuple[HashAlg, ...]] = ("sha256", "sm3")
DIGEST_SIZE: Final = 32
GENESIS_HASH: Final = "0" * (2 * DIGEST_SIZE)
"""``prev_hash`` of the first record of every chain."""

MAX_SAFE_INTEGER: Final = 2**53 - 1


class CanonicalError(ValueError):
    """The value cannot be written canonically (a float, a non-string key, a huge integer)."""


_SCALARS: Final = frozenset({str, bool, type(None)})


def _check(value: Any, path: str) -> None:
    kind = type(value)
    if kind in _SCALARS:
        return
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return
        raise CanonicalError(f"{path}: integer outside ±(2**53-1)")
    if kind is dict or kind is list or kind is tuple:
        is_object = kind is dict
        for key, item in value.items() if is_object else enumerate(value):
            if is_object and type(key) is not str:
                raise CanonicalError(f"{path}: object keys must be strings")
            kind = type(item)
            if kind in _SCALARS:  # most members, and lists of strings: no call, no path
                continue
            if kind is int and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                continue
            if (kind is list or kind is tuple) and _SCALARS.issuperset(map(type, item)):
                continue  # an array of strings (an event's subjects): no call, no path
            _check(item, f"{path}.{key}" if is_object else f"{path}[{key}]")
        return
    if kind is float:
        raise CanonicalError(f"{path}: floats are not allowed; use integers (ms, fen)")
    raise CanonicalError(f"{path}: {kind.__name__} is not a JSON value")


def canonical_bytes(value: Mapping[str, Any]) -> bytes:
    """Encode a JSON object canonically; raise CanonicalError for anything outside the subset."""
    _check(value, "$")
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # lone surrogates, exotic str subclasses
        raise CanonicalError(str(exc)) from exc


def parse_canonical(text: str | bytes) -> dict[str, Any]:
    """Parse a canonical object and prove it canonical by re-encoding it to the same bytes."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CanonicalError(f"not JSON: {exc}") from exc
    if type(value) is not dict:
        raise CanonicalError("not a JSON object")
    if canonical_bytes(value) != raw:
        raise CanonicalError("not in canonical form")
    return value


def has_canonical_encoding(value: Any, raw: bytes) -> bool:
    """Does re-encoding the parsed ``value`` give exactly ``raw``? (Key order, whitespace and
    escapes; the value subset is the writer's job.) Cheap enough for every verified record."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == raw
    except orjson.JSONEncodeError:
        return False


class HashObject(Protocol):
    def digest(self) -> bytes: ...


class _SM3:
    """hashlib-shaped SM3 (GB/T 32905) on ``cryptography``: ``_SM3(data).digest()``."""

    __slots__ = ("_value",)

    def __init__(self, data: bytes) -> None:
        h = hashes.Hash(hashes.SM3())
        h.update(data)
        self._value = h.finalize()

    def digest(self) -> bytes:
        return self._value


_CONSTRUCTORS: Final[dict[str, Callable[[bytes], HashObject]]] = {
    "sha256": hashlib.sha256,
    "sm3": _SM3,
}


def hash_constructor(alg: str) -> Callable[[bytes], HashObject]:
    """``hash_constructor(alg)(data).digest()``, like hashlib; ValueError for unknown names.
    Hot loops use this directly: no Python frame per hash for SHA-256."""
    try:
        return _CONSTRUCTORS[alg]
    except KeyError:
        raise ValueError(f"unknown hash algorithm {alg!r}; use one of {HASH_ALGS}") from None


def digest(alg: str, data: bytes) -> bytes:
    return hash_constructor(alg)(data).digest()


def chain_hash(alg: str, prev_hash_hex: str, record_canonical: bytes) -> str:
    """``H(prev_hash_bytes || H(record))`` as lower-case hex."""
    new = hash_constructor(alg)
    return new(bytes.fromhex(prev_hash_hex) + new(record_canonical).digest()).digest().hex()


def content_digest(alg: str, data: bytes) -> str:
    """A labelled digest of a payload for the request/response digest fields: ``sha256:<hex>``."""
    return f"{alg}:{digest(alg, data).hex()}"
