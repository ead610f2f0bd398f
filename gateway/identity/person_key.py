"""The gateway-internal person key, and the sealed access-token claim (``tb_pk``) that carries it.

Subjects are pairwise per portal (OIDC Core §8.1), so nothing a portal sees lets it correlate a
citizen with another portal's users. The gateway itself must know that two tokens from two
portals are one person (a case filed at one portal is hers at every portal), so it keys
ownership by a *person key*: ``base64url(HMAC-SHA256(K_person, local_id))``, with ``K_person``
derived from the pairwise secret by HKDF (RFC 5869) under its own label. ``local_id`` never
leaves the gateway; the person key is the same at every portal, so it must not either.

Access tokens are JWTs a client can read (RFC 9068), so the key travels in them only sealed:
AES-256-GCM (NIST SP 800-38D) under a second HKDF-derived key, a fresh random 96-bit nonce per
token (two tokens of one person never share a ciphertext), and associated data binding it to
the token's ``sub`` and ``client_id`` (a claim moved into another subject's token does not
open). The claim is ``base64url(nonce ‖ ciphertext ‖ tag)``.

Random nonces keep one key within SP 800-38D §8.3 for 2^32 sealings; at a sustained 30 tokens/s
that is about four years, after which the label's version (``v1``) is the thing to roll.
Changing the pairwise secret changes every person key, as it changes every ``sub``.

Must not: log, return to a caller outside the gateway or store ``local_id``; import aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from gateway.identity.identifiers import KeyedSha256

PERSON_CLAIM: Final = "tb_pk"
"""Private claim name (RFC 7519 §4.3) of the sealed person key in access tokens."""

_KEY_LABEL: Final = b"tongban person key v1"
_SEAL_LABEL: Final = b"tongban person claim seal v1 aes-256-gcm"
_AAD_LABEL: Final = "tb_pk/v1"
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_MAX_SEALED: Final = 256
"""Longest claim text accepted: a 43-character key seals to 95 characters."""


class SealError(ValueError):
    """A sealed person claim that does not open (tampered, foreign key, wrong sub or client)."""


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


ENTERPRISE_AAD: Final = "tb_ek/v1"
"""Associated-data label of the sealed enterprise key (gateway/identity/subject_keys.py): a
person claim moved into the enterprise claim does not open, nor the other way round."""


def _aad(subject: str, client_id: str, label: str = _AAD_LABEL) -> bytes:
    # A JSON array keeps the fields apart whatever characters they hold.
    return orjson.dumps([label, subject, client_id])


class PersonKeys:
    """Person keys and their sealed claim, from one deployment secret (built once at start-up)."""

    __slots__ = ("_aead", "_key")

    def __init__(self, pairwise_secret: SecretStr) -> None:
        secret = pairwise_secret.get_secret_value().encode()
        self._key = KeyedSha256(_derive(secret, _KEY_LABEL))
        self._aead = AESGCM(_derive(secret, _SEAL_LABEL))

    def __repr__(self) -> str:
        return "PersonKeys(<derived keys>)"

    def person_key(self, local_id: str) -> str:
        """The person key of the internal user ``local_id`` (the same at every portal)."""
        return _b64(self._key.digest(local_id.encode()))

    def seal(self, person: str, *, subject: str, client_id: str, label: str = _AAD_LABEL) -> str:
        """The ``tb_pk`` claim value for a token with this ``sub`` and ``client_id`` (another
        sealed claim with its own ``label``)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, person.encode(), _aad(subject, client_id, label))
        return _b64(nonce + sealed)

    def open(self, sealed: str, *, subject: str, client_id: str, label: str = _AAD_LABEL) -> str:
        """The person key in ``sealed``; SealError unless it was sealed for this sub and client."""
        if not isinstance(sealed, str) or len(sealed) > _MAX_SEALED:
            raise SealError("malformed")
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        except (binascii.Error, ValueError):
            raise SealError("malformed") from None
        if len(raw) <= _NONCE_BYTES + _TAG_BYTES:
            raise SealError("malformed")
        try:
            plain = self._aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(subject, client_id, label)
            )
        except InvalidTag:
            raise SealError("does not open") from None
        try:
            return plain.decode()
        except UnicodeDecodeError:
            raise SealError("malformed") from None
