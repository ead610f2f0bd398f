"""The OAuth2-with-quirks kind of ``UpstreamIdP`` (Guangdong, Guangxi; docs/identity-platforms.md).

Authorization code flow (RFC 6749 §4.1) with the deployed deviations, each configuration:
- the token request is a GET with ``client_secret`` in the query and fixed extra parameters
  (``service=initService``); RFC 6749 §2.3.1 discourages this, the platforms require it;
- user information comes from a ``tokeninfo`` endpoint as a nested object (``userobj`` with
  LDAP-style names) whose ``extproperties`` are ``"k=v"`` strings, turned into an object here;
- optionally the body is AES-CBC encrypted with a per-client key (base64 of IV ‖ ciphertext)
  and signed (``signdata``: HMAC-SHA256 hex, or md5(data + secret)); the signature is checked
  over the exact text before anything is decrypted or parsed.
``error`` and ``state`` are checked before any token request (RFC 9700 §4.7).

Must not: import aiohttp; log the code, the tokens, the key or personal data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
import structlog
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.identity.citizen import FederatedIdentity, MappingError, _lookup, map_claims
from gateway.identity.identifiers import LinkKeyer
from gateway.identity.upstream import AvailabilityCache, UpstreamError, UpstreamLogin
from gateway.identity.upstream_kinds import OAuth2QuirksIdpSettings

log = structlog.get_logger("tongban.identity")

_MAX_RESPONSE = 256 * 1024


def parse_kv_list(value: Any) -> dict[str, str] | None:
    """``["k=v", ...]`` (or one ``"k=v,k2=v2"`` string) → ``{"k": "v", ...}``."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        return None
    out: dict[str, str] = {}
    for item in items:
        if isinstance(item, str) and "=" in item:
            key, _, val = item.partition("=")
            out[key.strip()] = val.strip()
    return out


def _aes_key(secret: str) -> bytes:
    try:
        raw = bytes.fromhex(secret) if len(secret) in (32, 48, 64) else secret.encode()
    except ValueError:
        raw = secret.encode()
    if len(raw) not in (16, 24, 32):
        raise UpstreamError("userinfo_key_unusable")
    return raw


def aes_encrypt(secret: str, plaintext: bytes, iv: bytes) -> str:
    """The platforms' scheme (demo and tests): base64(IV ‖ AES-CBC(PKCS7(plaintext)))."""
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_aes_key(secret)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(data) + encryptor.finalize()).decode()


def aes_decrypt(secret: str, text: str) -> bytes:
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UpstreamError("userinfo_malformed") from None
    if len(blob) < 32 or len(blob) % 16:
        raise UpstreamError("userinfo_malformed")
    decryptor = Cipher(algorithms.AES(_aes_key(secret)), modes.CBC(blob[:16])).decryptor()
    padded = decryptor.update(blob[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise UpstreamError("userinfo_malformed") from None


def body_signature(algorithm: str, secret: str, text: str) -> str:
    if algorithm == "md5":
        return hashlib.md5((text + secret).encode(), usedforsecurity=False).hexdigest()
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


class OAuth2QuirksUpstream:
    """One quirky OAuth2 platform."""

    def __init__(
        self,
        platform: str,
        settings: OAuth2QuirksIdpSettings,
        http: httpx.AsyncClient,
        *,
        timeout: float = 3.0,
        linker: LinkKeyer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.platform = platform
        self.province = settings.province
        self.display_name = (settings.name.zh, settings.name.en)
        self.for_enterprises = False
        self.settings = settings
        self._http = http
        self._timeout = timeout
        self._linker = linker
        self._clock = clock
        self._availability = AvailabilityCache(self._probe, clock)

    async def available(self) -> bool:
        return await self._availability()

    async def _probe(self) -> bool:
        try:
            response = await self._http.get(self.settings.authorize_url, timeout=self._timeout)
            ok = response.status_code < 500
        except httpx.HTTPError:
            ok = False
        return ok

    async def start_login(self, login: UpstreamLogin) -> str:
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": login.redirect_uri,
            "state": login.state,
        }
        if self.settings.scope:
            params["scope"] = self.settings.scope
        url = self.settings.authorize_url
        return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"

    async def _json(self, method: str, url: str, **kw: Any) -> Any:
        try:
            response = await self._http.request(method, url, timeout=self._timeout, **kw)
        except httpx.HTTPError:
            raise UpstreamError("upstream_unreachable", unavailable=True) from None
        if response.status_code >= 500:
            raise UpstreamError("upstream_unreachable", unavailable=True)
        if response.status_code != 200 or len(response.content) > _MAX_RESPONSE:
            raise UpstreamError("upstream_error")
        try:
            return response.json()
        except ValueError:
            raise UpstreamError("upstream_answer_malformed") from None

    async def complete(self, params: Mapping[str, str], login: UpstreamLogin) -> FederatedIdentity:
        if "error" in params:
            raise UpstreamError("upstream_refused")
        if params.get("state") != login.state:
            raise UpstreamError("state_mismatch")
        code = params.get("code")
        if not code:
            raise UpstreamError("code_missing")
        s = self.settings
        token_params = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": s.client_id,
            "client_secret": s.client_secret.get_secret_value(),
            "redirect_uri": login.redirect_uri,
            **s.extra_token_params,
        }
        if s.token_method == "GET":
            body = await self._json("GET", s.token_url, params=token_params)
        else:
            body = await self._json("POST", s.token_url, data=token_params)
        token = _lookup(body, s.token_field) if isinstance(body, Mapping) else None
        if not isinstance(token, str) or not token:
            raise UpstreamError("token_request_refused")
        info = await self._json("GET", s.tokeninfo_url, params={"access_token": token})
        claims = self.user_info(info)
        try:
            identity = map_claims(
                self.platform,
                s.claims,
                claims,
                keep_id_number=s.keep_id_number,
                linker=self._linker,
            )
        except MappingError as exc:
            log.warning("upstream_claims_unusable", platform=self.platform, reason=str(exc))
            raise UpstreamError("claims_unusable") from None
        log.info("upstream_login_completed", platform=self.platform, level=identity.level)
        return identity

    def user_info(self, info: Any) -> dict[str, Any]:
        """Signature first, then decryption, then ``k=v`` lists; ``UpstreamError`` otherwise."""
        if not isinstance(info, Mapping):
            raise UpstreamError("userinfo_malformed")
        s = self.settings
        if s.signed is not None:
            text = info.get(s.signed.over)
            given = info.get(s.signed.field)
            if not isinstance(text, str) or not isinstance(given, str):
                raise UpstreamError("userinfo_signature_invalid")
            expected = body_signature(s.signed.algorithm, s.signed.secret.get_secret_value(), text)
            if not hmac.compare_digest(expected.encode(), given.lower().encode()):
                raise UpstreamError("userinfo_signature_invalid")
        claims: Any = info
        if s.encrypted is not None:
            cipher = info.get(s.encrypted.field)
            if not isinstance(cipher, str):
                raise UpstreamError("userinfo_malformed")
            plain = aes_decrypt(s.encrypted.key.get_secret_value(), cipher)
            try:
                claims = json.loads(plain)
            except ValueError:
                raise UpstreamError("userinfo_malformed") from None
        if not isinstance(claims, dict):
            raise UpstreamError("userinfo_malformed")
        for path in s.kv_lists:
            *parents, last = path.split(".")
            holder: Any = claims
            for part in parents:
                holder = holder.get(part) if isinstance(holder, dict) else None
            if isinstance(holder, dict) and last in holder:
                parsed = parse_kv_list(holder[last])
                if parsed is None:
                    raise UpstreamError("userinfo_malformed")
                holder[last] = parsed
        return claims
