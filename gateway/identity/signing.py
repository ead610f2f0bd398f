"""Back-channel request signatures of provincial identity platforms, both sides, and
the replay controls they need.

Schemes:
- ``md5``: ``sign = md5(code + secret + time)``, 32 lowercase hex, ``time`` as yyyyMMddHHmmss
  in China Standard Time (the classic shared-secret scheme);
- ``sm3``: the same concatenation hashed with SM3 (GB/T 32905);
- ``hmac-sha256``: provincial API-gateway style headers ``X-Access-Key``, ``X-Date``, ``X-Nonce``
  and ``X-Signature = base64(HMAC-SHA256(secret, method\\npath\\nquery\\nkey\\ndate\\nnonce))``
  with the parameters sorted and form-encoded.

The concatenation schemes sign nothing of the request itself, so the verifying side keeps a
clock-skew window and a nonce cache keyed by (app, operation, argument, signature): a captured
call cannot be replayed within the window, and outside it the time check refuses it.

Must not: log a secret or a signature; import aiohttp.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Literal
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes
from pydantic import BaseModel, ConfigDict, Field

Scheme = Literal["md5", "sm3", "hmac-sha256"]
CST = dt.timezone(dt.timedelta(hours=8), "CST")
TIME_FORMAT = "%Y%m%d%H%M%S"
ACCESS_KEY_HEADER = "X-Access-Key"
DATE_HEADER = "X-Date"
NONCE_HEADER = "X-Nonce"
SIGNATURE_HEADER = "X-Signature"


class SignatureError(Exception):
    """A request's signature cannot be accepted; ``reason`` is a safe snake_case word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureSettings(BaseModel):
    """How back-channel calls are signed (per platform, or per legacy app)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: Scheme = "md5"
    """md5 / sm3 of code+secret+time in parameters, or hmac-sha256 request headers."""
    code_param: str = Field("servicecode", min_length=1)
    """Parameter carrying the app code (``servicecode`` or ``appmark``)."""
    time_param: str = Field("time", min_length=1)
    """Parameter carrying the yyyyMMddHHmmss time."""
    sign_param: str = Field("sign", min_length=1)
    """Parameter carrying the signature."""
    window: int = Field(300, ge=10, le=3600)
    """Seconds of clock skew accepted either way when verifying."""


def format_time(now: float) -> str:
    return dt.datetime.fromtimestamp(now, CST).strftime(TIME_FORMAT)


def parse_time(text: str) -> float | None:
    try:
        return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=CST).timestamp()
    except ValueError:
        return None


def concat_signature(scheme: Scheme, code: str, secret: str, when: str) -> str:
    """md5 / sm3 hex of code + secret + time."""
    data = f"{code}{secret}{when}".encode()
    if scheme == "sm3":
        digest = hashes.Hash(hashes.SM3())
        digest.update(data)
        return digest.finalize().hex()
    return hashlib.md5(data, usedforsecurity=False).hexdigest()  # the platforms' scheme


def _canonical(
    method: str, path: str, params: Mapping[str, str], key: str, date: str, nonce: str
) -> bytes:
    query = urlencode(sorted(params.items()))
    return "\n".join((method.upper(), path, query, key, date, nonce)).encode()


def hmac_signature(
    secret: str, method: str, path: str, params: Mapping[str, str], key: str, date: str, nonce: str
) -> str:
    mac = hmac.new(
        secret.encode(), _canonical(method, path, params, key, date, nonce), hashlib.sha256
    )
    return base64.b64encode(mac.digest()).decode()


def sign_request(
    settings: SignatureSettings,
    code: str,
    secret: str,
    *,
    method: str,
    path: str,
    params: Mapping[str, str],
    now: float,
) -> tuple[dict[str, str], dict[str, str]]:
    """(parameters to add, headers to add) for one outgoing call."""
    when = format_time(now)
    if settings.scheme == "hmac-sha256":
        nonce = secrets.token_hex(12)
        signature = hmac_signature(secret, method, path, params, code, when, nonce)
        headers = {
            ACCESS_KEY_HEADER: code,
            DATE_HEADER: when,
            NONCE_HEADER: nonce,
            SIGNATURE_HEADER: signature,
        }
        return {}, headers
    return {
        settings.code_param: code,
        settings.time_param: when,
        settings.sign_param: concat_signature(settings.scheme, code, secret, when),
    }, {}


class NonceCache:
    """Seen signatures, kept for twice the window, bounded (oldest evicted first).

    One instance per process: with several instances, the one-time tickets and tokens (in the
    shared session store) remain the primary replay control; this cache narrows the window.
    """

    def __init__(self, ttl: float, *, limit: int = 100_000, clock: Callable[[], float] = time.time):
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_use(self, key: str) -> bool:
        """True the first time ``key`` is seen within the TTL, False for a replay."""
        now = self._clock()
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self._limit:
                break
            del self._seen[oldest]
        digest = hashlib.sha256(key.encode()).hexdigest()
        if digest in self._seen:
            return False
        self._seen[digest] = now + self._ttl
        return True


def verify_request(
    settings: SignatureSettings,
    secret_of: Callable[[str], str | None],
    *,
    method: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    now: float,
    nonces: NonceCache,
    operation: str,
    argument: str,
) -> str:
    """The calling app's code when its signature, time and freshness hold; else SignatureError.

    ``argument`` is the ticket or token the call is about: part of the replay key, since the
    concatenation schemes sign nothing of the request.
    """
    if settings.scheme == "hmac-sha256":
        code = headers.get(ACCESS_KEY_HEADER, "")
        when = headers.get(DATE_HEADER, "")
        nonce = headers.get(NONCE_HEADER, "")
        given = headers.get(SIGNATURE_HEADER, "")
    else:
        code = params.get(settings.code_param, "")
        when = params.get(settings.time_param, "")
        nonce = ""
        given = params.get(settings.sign_param, "")
    if not code or not when or not given:
        raise SignatureError("signature_missing")
    secret = secret_of(code)
    if secret is None:
        raise SignatureError("unknown_app")
    stamp = parse_time(when)
    if stamp is None or abs(now - stamp) > settings.window:
        raise SignatureError("timestamp_out_of_window")
    if settings.scheme == "hmac-sha256":
        if not 8 <= len(nonce) <= 64:
            raise SignatureError("signature_missing")
        signed = dict(params)
        expected = hmac_signature(secret, method, path, signed, code, when, nonce)
        replay_key = f"{code}|{nonce}"
    else:
        expected = concat_signature(settings.scheme, code, secret, when)
        given = given.lower()
        replay_key = f"{code}|{operation}|{argument}|{given}"
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureError("signature_invalid")
    if not nonces.first_use(replay_key):
        raise SignatureError("request_replayed")
    return code
