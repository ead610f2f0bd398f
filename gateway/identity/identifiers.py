"""National identifiers: check characters, ID-type and applicant-type codes, the link key.

- Resident ID number, GB 11643-1999: 17 digits + a check character by ISO 7064 MOD 11-2.
- Unified social credit code, GB 32100-2015: 18 characters over a 31-character alphabet (no I, O,
  S, V, Z), the last one a MOD 31 check character.
- Business registration number (工商注册号) of enterprises registered before the credit code
  (2015): 15 digits, the first six the registering authority's area code, the last an
  ISO 7064 MOD 11,10 check digit. A kind of its own, never read as a credit code.
- ID types are normalised to the national certificate codes (111 resident ID card, 414 passport,
  ...); each platform's own code is kept beside (docs/identity-platforms.md, "Identifiers").
- Applicant types are the national codes used in service rating (1 自然人, 2 企业法人, ...).
- The cross-province link key is a keyed hash (HMAC-SHA256 or HMAC-SM3) of ID type + number: one
  person signing in through two provinces gets the same local id, and the raw number is never
  stored or sent (the national platform's ``certKey`` plays the same role).

Must not: log or return a raw ID number; import aiohttp.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Literal, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

RESIDENT_ID_CARD = "111"
"""National code of the resident ID card (居民身份证)."""

ID_TYPES: dict[str, str] = {
    "111": "居民身份证",
    "114": "军官证",
    "414": "普通护照",
    "511": "台湾居民来往大陆通行证",
    "516": "港澳居民来往内地通行证",
    "553": "外国人永久居留身份证",
    "990": "其他",
}
"""National certificate codes the gateway normalises to."""

APPLICANT_TYPES: dict[str, str] = {
    "1": "自然人",
    "2": "企业法人",
    "3": "事业法人",
    "4": "社会组织法人",
    "5": "非法人企业",
    "6": "行政机关",
    "9": "其他组织",
}
"""National applicant types (好差评 and service records)."""

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_RESIDENT_ID = re.compile(r"^[1-9][0-9]{16}[0-9X]$")

CREDIT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_CREDIT_CODE = re.compile(rf"^[{CREDIT_ALPHABET}]{{18}}$")


def resident_id_check(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits (GB 11643 §5.2)."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def valid_resident_id(value: str) -> bool:
    """Shape and check character of an 18-character resident ID number (``x`` accepted)."""
    value = value.strip().upper()
    return bool(_RESIDENT_ID.match(value)) and resident_id_check(value[:17]) == value[17]


def credit_code_check(first17: str) -> str:
    """GB 32100 §4.3 check character: 31 - (Σ value × weight mod 31), 31 read as 0."""
    total = sum(CREDIT_ALPHABET.index(c) * w for c, w in zip(first17, _CREDIT_WEIGHTS, strict=True))
    return CREDIT_ALPHABET[(31 - total % 31) % 31]


def valid_credit_code(value: str) -> bool:
    """Shape and check character of an 18-character unified social credit code."""
    value = value.strip().upper()
    return bool(_CREDIT_CODE.match(value)) and credit_code_check(value[:17]) == value[17]


_REGISTRATION_NUMBER = re.compile(r"^[1-9][0-9]{14}$")


def registration_number_check(first14: str) -> str:
    """ISO 7064 MOD 11,10 check digit of the first 14 digits of a registration number."""
    product = 10
    for digit in first14:
        total = (product + int(digit)) % 10 or 10
        product = (total * 2) % 11
    return str((11 - product) % 10)


def valid_registration_number(value: str) -> bool:
    """Shape and check digit of a 15-digit business registration number (工商注册号)."""
    value = value.strip()
    return bool(_REGISTRATION_NUMBER.match(value)) and (
        registration_number_check(value[:14]) == value[14]
    )


def make_registration_number(first14: str) -> str:
    """A registration number with its check digit appended (demo and test data)."""
    return first14 + registration_number_check(first14)


def make_credit_code(first17: str) -> str:
    """A code with its check character appended (demo and test data)."""
    return first17 + credit_code_check(first17)


LinkAlgorithm = Literal["hmac-sha256", "hmac-sm3"]
LinkKeyer = Callable[[str, str], str]
"""(national ID type, ID number) → link key."""


class _Mac(Protocol):
    def copy(self) -> _Mac: ...
    def update(self, message: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _keyed_state(key: bytes) -> _Mac:
    """OpenSSL's keyed HMAC state itself where Python has it: ``hmac.HMAC`` wraps that state in
    Python methods (its ``copy`` a new wrapper object and two Python calls, its ``digest`` two
    more), which cost about as much again as the hashing of a short message."""
    try:
        from _hashlib import hmac_new  # noqa: PLC0415 - optional: absent without OpenSSL

        keyed: _Mac = hmac_new(key, digestmod="sha256")
    except (ImportError, TypeError, ValueError):
        # A Python built without OpenSSL's hashlib, or one whose private function takes other
        # arguments: the public wrapper, same bytes.
        return hmac.new(key, digestmod=hashlib.sha256)
    return keyed


class KeyedSha256:
    """HMAC-SHA256 under one key, keyed once. ``hmac.digest(key, message, "sha256")`` looks the
    digest up and keys it again on every call; copying a keyed state costs half of that, and
    the routed call path takes three of these per call. Gives the same bytes as ``hmac.digest``."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = _keyed_state(key)

    def __repr__(self) -> str:
        return "KeyedSha256(<key>)"

    def digest(self, message: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(message)
        return mac.digest()


def link_keyer(secret: str, algorithm: LinkAlgorithm = "hmac-sha256") -> LinkKeyer:
    """The keyed hash of ``type|NUMBER`` (hex); the same person gives the same key everywhere."""
    key = secret.encode()
    sha256 = KeyedSha256(key)

    def keyed(id_type: str, number: str) -> str:
        message = f"{id_type}|{number.strip().upper()}".encode()
        if algorithm == "hmac-sm3":
            mac = crypto_hmac.HMAC(key, hashes.SM3())
            mac.update(message)
            return mac.finalize().hex()
        return sha256.digest(message).hex()

    return keyed
