"""The issuer's electronic seal (电子印章) over a licence, checked by the gateway itself.

A sealed licence is a JSON object (the licence's data: type, number, issuer, holder, fields,
validity) and a seal: ``{"kid", "alg", "value"}``. The seal is a signature over the licence's
canonical bytes (gateway/audit/canonical.py: sorted keys, no whitespace, no floats), so any
language reproduces the bytes an issuer signed.

Algorithm: ECDSA on P-256 with SHA-256 (``ES256``; the value is the DER signature, base64).
The national algorithms (SM2 signature with SM3) are the natural choice for a seal; no
maintained Python library offers SM2 signatures on OpenSSL today (pyca/cryptography exposes SM3
but not SM2; the pure-Python packages are unmaintained and not constant-time), so seals are
ES256 until one does (docs/licences.md). ``alg`` travels with every seal and keys are declared
with their algorithm, so a second algorithm is an addition, not a migration.

Keys rotate by key id (``kid``): an issuer publishes its keys, each with an optional validity
window; a seal names its key; an unknown kid, a key outside its window, another algorithm than
the key's, or a signature that does not hold are each refused with their own reason.

Must not: import aiohttp; log licence data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.canonical import CanonicalError, canonical_bytes

SEAL_ALGORITHMS: Final = ("ES256",)
SealAlgorithm = Literal["ES256"]
SealProblem = Literal[
    "malformed", "unknown_key", "key_not_valid", "algorithm_mismatch", "signature_invalid"
]


class SealRefused(ValueError):
    """The seal does not hold; ``reason`` says why (stable words for problem details)."""

    def __init__(self, reason: SealProblem, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class SealKey:
    """One published seal-verification key of an issuer."""

    kid: str
    algorithm: SealAlgorithm
    public_key: ec.EllipticCurvePublicKey
    not_before: datetime | None = None
    not_after: datetime | None = None

    def valid_at(self, moment: datetime) -> bool:
        if self.not_before is not None and moment < self.not_before:
            return False
        return self.not_after is None or moment <= self.not_after


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM (SubjectPublicKeyInfo); ValueError otherwise."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 (secp256r1) public key")
    return key


@dataclass(frozen=True, slots=True)
class SealedLicence:
    """A licence as its issuer sealed it; ``data`` is never logged."""

    data: Mapping[str, Any]
    kid: str
    alg: str
    value: str

    @property
    def canonical(self) -> bytes:
        return canonical_bytes(self.data)

    @property
    def data_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical).hexdigest()

    @property
    def seal_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.value.encode()).hexdigest()

    @classmethod
    def from_answer(cls, answer: Any) -> SealedLicence:
        """``{"licence": {...}, "seal": {"kid", "alg", "value"}}`` as an issuer answers;
        SealRefused('malformed') for anything else."""
        if not isinstance(answer, Mapping):
            raise SealRefused("malformed", "the sealed licence is not an object")
        data, seal = answer.get("licence"), answer.get("seal")
        if not isinstance(data, Mapping) or not isinstance(seal, Mapping):
            raise SealRefused("malformed", "a sealed licence has 'licence' and 'seal' objects")
        fields = [seal.get(k) for k in ("kid", "alg", "value")]
        if not all(isinstance(f, str) and 0 < len(f) <= 4096 for f in fields):
            raise SealRefused("malformed", "the seal has kid, alg and value strings")
        kid, alg, value = (str(f) for f in fields)
        return cls(dict(data), kid, alg, value)

    def as_answer(self) -> dict[str, Any]:
        return {
            "licence": dict(self.data),
            "seal": {"kid": self.kid, "alg": self.alg, "value": self.value},
        }


class SealKeyRing:
    """The published keys of one issuer, by key id."""

    def __init__(self, keys: Iterable[SealKey]) -> None:
        self._keys = {key.kid: key for key in keys}

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    def check(self, sealed: SealedLicence, at: datetime) -> None:
        """Return when the seal holds over the licence's canonical data; SealRefused otherwise."""
        key = self._keys.get(sealed.kid)
        if key is None:
            raise SealRefused("unknown_key", "the seal names a key the issuer has not published")
        if sealed.alg != key.algorithm:
            raise SealRefused(
                "algorithm_mismatch", f"key {sealed.kid!r} seals with {key.algorithm}"
            )
        if not key.valid_at(at):
            raise SealRefused("key_not_valid", f"key {sealed.kid!r} is outside its validity")
        try:
            signature = base64.b64decode(sealed.value, validate=True)
            message = sealed.canonical
        except (binascii.Error, ValueError, CanonicalError):
            raise SealRefused("malformed", "the seal or the licence cannot be read") from None
        try:
            key.public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SealRefused(
                "signature_invalid", "the seal does not hold over this licence"
            ) from None


def seal_licence(
    data: Mapping[str, Any], private_key: ec.EllipticCurvePrivateKey, kid: str
) -> SealedLicence:
    """Seal ``data`` as an issuer does (demo issuers and tests; the gateway never seals)."""
    signature = private_key.sign(canonical_bytes(data), ec.ECDSA(hashes.SHA256()))
    return SealedLicence(dict(data), kid, "ES256", base64.b64encode(signature).decode())


def public_pem(private_key: ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
