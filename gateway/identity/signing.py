"""Back-channel request signatures of provincial identity platforms, both sides
(docs/identity-platforms.md, "Signatures"), and the replay controls they need.

Schemes are named plug-ins: the built-in ones below, and any object an installed package
registers in the entry-point group ``tongban.signature_schemes`` (a ``ParameterScheme``).
- ``md5``: ``sign = md5(code + secret + time)``, 32 lowercase hex, ``time`` as yyyyMMddHHmmss
  in China Standard Time (the classic shared-secret scheme);
- ``sm3``: the same concatenation hashed with SM3 (GB/T 32905);
- ``xor-base64-md5``: a legacy vendor's reversible cipher: the uppercase hex MD5 of the secret,
  XORed byte by byte with the time string (repeated), then Base64. Whoever sees one sign and its
  time recovers the MD5 of the secret, which is all it takes to sign anything: a shared-secret
  transport, never proof of who called. The gateway keeps its own replay controls around it;
- ``hmac-sha256``: provincial API-gateway style headers ``X-Access-Key``, ``X-Date``, ``X-Nonce``
  and ``X-Signature = base64(HMAC-SHA256(secret, method\\npath\\nquery\\nkey\\ndate\\nnonce))``
  with the parameters sorted and form-encoded.

The parameter schemes sign nothing of the request itself, so the verifying side keeps a
clock-skew window and a nonce cache keyed by (app, operation, argument, signature): a captured
call cannot be replayed within the window, and outside it the time check refuses it.

Must not: log a secret or a signature; import aiohttp.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from itertools import cycle
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes
from pydantic import BaseModel, ConfigDict, Field, field_validator

CST = dt.timezone(dt.timedelta(hours=8), "CST")
TIME_FORMAT = "%Y%m%d%H%M%S"
ACCESS_KEY_HEADER = "X-Access-Key"
DATE_HEADER = "X-Date"
NONCE_HEADER = "X-Nonce"
SIGNATURE_HEADER = "X-Signature"
HEADER_SCHEME = "hmac-sha256"
"""The one scheme that signs the HTTP request in headers rather than adding a parameter."""
ENTRY_POINT_GROUP = "tongban.signature_schemes"


class SignatureError(Exception):
    """A request's signature cannot be accepted; ``reason`` is a safe snake_case word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParameterScheme:
    """A signature carried in a request parameter, computed from the app code, the shared
    secret and the time string. A plug-in registers one of these under its name."""

    name: str
    sign: Callable[[str, str, str], str]
    """(code, secret, time) → the sign parameter's value."""
    case_insensitive: bool = False
    """Hex signatures: compared and remembered in lower case."""
    reversible: bool = False
    """Anyone who sees a sign can recover what signs: never treat it as proof."""

    def canonical(self, given: str) -> str:
        return given.lower() if self.case_insensitive else given


def _hash_sign(algorithm: str) -> Callable[[str, str, str], str]:
    def sign(code: str, secret: str, when: str) -> str:
        data = f"{code}{secret}{when}".encode()
        if algorithm == "sm3":
            digest = hashes.Hash(hashes.SM3())
            digest.update(data)
            return digest.finalize().hex()
        return hashlib.md5(data, usedforsecurity=False).hexdigest()  # the platforms' scheme

    return sign


def xor_base64_md5(code: str, secret: str, when: str) -> str:
    """The legacy reversible cipher: Base64(UPPER(md5_hex(secret)) XOR time, repeated)."""
    plain = hashlib.md5(secret.encode(), usedforsecurity=False).hexdigest().upper().encode()
    key = when.encode() or b"\0"
    return base64.b64encode(bytes(p ^ k for p, k in zip(plain, cycle(key)))).decode("ascii")


BUILT_IN_SCHEMES: Mapping[str, ParameterScheme] = {
    "md5": ParameterScheme("md5", _hash_sign("md5"), case_insensitive=True),
    "sm3": ParameterScheme("sm3", _hash_sign("sm3"), case_insensitive=True),
    "xor-base64-md5": ParameterScheme("xor-base64-md5", xor_base64_md5, reversible=True),
}


@functools.cache
def _plugins() -> dict[str, ParameterScheme]:
    found: dict[str, ParameterScheme] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        scheme = entry.load()
        if isinstance(scheme, ParameterScheme):
            found[entry.name] = scheme
    return found


def scheme_names() -> list[str]:
    """Every scheme a configuration may name."""
    return sorted({HEADER_SCHEME, *BUILT_IN_SCHEMES, *_plugins()})


def parameter_scheme(name: str) -> ParameterScheme:
    """The parameter scheme registered as ``name``; KeyError for the header scheme or none."""
    scheme = BUILT_IN_SCHEMES.get(name) or _plugins().get(name)
    if scheme is None:
        raise KeyError(name)
    return scheme


class SignatureSettings(BaseModel):
    """How back-channel calls are signed (per platform, or per legacy app)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: str = "md5"
    """A registered scheme: md5, sm3, xor-base64-md5 (legacy, reversible), hmac-sha256
    (request headers), or a plug-in's name."""
    code_param: str = Field("servicecode", min_length=1)
    """Parameter carrying the app code (``servicecode`` or ``appmark``)."""
    time_param: str = Field("time", min_length=1)
    """Parameter carrying the yyyyMMddHHmmss time."""
    sign_param: str = Field("sign", min_length=1)
    """Parameter carrying the signature."""
    window: int = Field(300, ge=10, le=3600)
    """Seconds of clock skew accepted either way when verifying."""

    @field_validator("scheme")
    @classmethod
    def _registered(cls, value: str) -> str:
        known = scheme_names()
        if value not in known:
            raise ValueError(f"no signature scheme {value!r}; registered: {', '.join(known)}")
        return value


def format_time(now: float) -> str:
    return dt.datetime.fromtimestamp(now, CST).strftime(TIME_FORMAT)


def parse_time(text: str) -> float | None:
    try:
        return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=CST).timestamp()
    except ValueError:
        return None


def concat_signature(scheme: str, code: str, secret: str, when: str) -> str:
    """The sign parameter of a parameter scheme (md5 / sm3 of code + secret + time, ...)."""
    return parameter_scheme(scheme).sign(code, secret, when)


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
    if settings.scheme == HEADER_SCHEME:
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
    if settings.scheme == HEADER_SCHEME:
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
    if settings.scheme == HEADER_SCHEME:
        if not 8 <= len(nonce) <= 64:
            raise SignatureError("signature_missing")
        signed = dict(params)
        expected = hmac_signature(secret, method, path, signed, code, when, nonce)
        replay_key = f"{code}|{nonce}"
    else:
        scheme = parameter_scheme(settings.scheme)
        expected = scheme.canonical(scheme.sign(code, secret, when))
        given = scheme.canonical(given)
        replay_key = f"{code}|{operation}|{argument}|{given}"
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureError("signature_invalid")
    if not nonces.first_use(replay_key):
        raise SignatureError("request_replayed")
    return code
