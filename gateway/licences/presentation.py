"""亮证: a holder shows a licence with a short-lived, single-use code; a verifier checks it.

The holder, signed in, asks for a presentation code for one of their licences. The gateway
finds and verifies the licence (gateway/licences/verify.py) and seals what the code stands for
(type, province, number, the holder's keyed hash, the data digest, the holder's subject for the
access log, a random id, issue and expiry time) with AES-256-GCM under a key derived from the
deployment's pairwise secret (HKDF, its own label): every instance opens it, nobody else reads
or forges it, and the QR code carries nothing personal in clear.

A verifier (a window clerk, a verifier client) submits the code with the service it verifies
for. The gateway opens it (``client.presentation_invalid`` for anything altered or not a code),
refuses one issued in the future beyond a small clock skew (``client.presentation_invalid``,
clock-skewed) or past its expiry (``client.presentation_expired``), spends it once across
instances (``client.presentation_used`` the second time), asks the issuer for the licence's
live status (not a cached answer) and checks the licence is the one the code was made for. The
verifier sees only the fields its service declares it needs (``licence.show`` of the service's
material); every other field is masked.

Must not: import aiohttp; log codes or licence data.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.adapter import CallContext
from gateway.consent.contract import DataSubject
from gateway.errors import ClientError
from gateway.licences.errors import NOT_VALID
from gateway.licences.verify import Holder, LicenceVerifier, Verification

PREFIX: Final = "LP1."
_LABEL: Final = b"tongban licence presentation v1 aes-256-gcm"
_AAD: Final = b"tongban/licence-presentation/v1"
_NONCE: Final = 12
DEFAULT_TTL: Final = 180.0
CLOCK_SKEW: Final = 30.0


class PresentationInvalid(ClientError):
    code = "client.presentation_invalid"
    http_status = 422
    title = "This is not a valid presentation code"


class PresentationExpired(ClientError):
    code = "client.presentation_expired"
    http_status = 422
    title = "The presentation code has expired"


class PresentationUsed(ClientError):
    code = "client.presentation_used"
    http_status = 409
    title = "The presentation code has been used already"


@dataclass(frozen=True, slots=True)
class Presentation:
    code: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Presented:
    """What a verifier sees of a presented licence."""

    verification: Verification
    fields: dict[str, Any]
    holder_subject: str
    """The holder's subject at the portal where the code was made (for the access log)."""
    presentation_id: str


def mask(value: Any) -> str:
    """A field the verifier does not need: its first character at most, the rest hidden."""
    text = str(value)
    if len(text) <= 1:
        return "*"
    return text[:1] + "*" * min(len(text) - 1, 8)


class PresentationCodes:
    def __init__(
        self,
        secret: bytes,
        verifier: LicenceVerifier,
        claim_once: Callable[[str, float], Awaitable[bool]],
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL).derive(secret)
        self._aead = AESGCM(key)
        self._verifier = verifier
        self._claim_once = claim_once
        self.ttl = ttl
        self._clock = clock

    def issue(self, found: Verification, holder_subject: str) -> Presentation:
        now = self._clock()
        claims = {
            "j": secrets.token_urlsafe(12),
            "t": found.licence_type,
            "p": found.province,
            "n": found.number,
            "k": found.holder.kind,
            "h": found.holder.key,
            "d": found.data_digest,
            "s": holder_subject,
            "i": int(now),
            "e": int(now + self.ttl),
        }
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, orjson.dumps(claims), _AAD)
        code = PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
        return Presentation(code, now + self.ttl)

    def _open(self, code: str) -> dict[str, Any]:
        if not isinstance(code, str) or not code.startswith(PREFIX) or len(code) > 1024:
            raise PresentationInvalid("This is not a presentation code.")
        body = code[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD)
            claims = orjson.loads(plain)
        except (binascii.Error, ValueError, InvalidTag, orjson.JSONDecodeError):
            raise PresentationInvalid("The presentation code was altered or is not one.") from None
        if not isinstance(claims, dict):
            raise PresentationInvalid("The presentation code was altered or is not one.")
        return claims

    async def check(
        self, code: str, context: CallContext, *, show_for: Mapping[str, Sequence[str]]
    ) -> Presented:
        """``show_for``: licence type → the fields the verifier's service needs; a code for
        another type is refused before it is spent."""
        claims = self._open(code)
        now = self._clock()
        if claims["i"] > now + CLOCK_SKEW:
            raise PresentationInvalid(
                "The presentation code was issued in the future: a clock is wrong."
            )
        if claims["e"] < now - CLOCK_SKEW:
            raise PresentationExpired("The presentation code has expired: ask for a new one.")
        if claims["t"] not in show_for:
            raise PresentationInvalid(
                f"The code presents a {claims['t']!r}, which this service does not verify."
            )
        show = show_for[claims["t"]]
        if not await self._claim_once(f"licence-presentation:{claims['j']}", self.ttl * 2):
            raise PresentationUsed("The presentation code was shown already: ask for a new one.")
        holder = Holder(DataSubject(claims["k"], claims["h"]), "", "")
        found = await self._verifier.find(
            claims["t"], claims["p"], holder, context, number=claims["n"], fresh=True
        )
        if found.data_digest != claims["d"]:
            raise NOT_VALID["changed"](
                "The licence changed at its issuer since the code was made: ask for a new one.",
                status="changed",
            )
        fields = found.licence.data.get("fields")
        shown = {
            name: value if name in show else mask(value)
            for name, value in (fields.items() if isinstance(fields, Mapping) else ())
        }
        return Presented(found, shown, str(claims["s"]), str(claims["j"]))
