"""The province-shaped face for legacy business systems, and CAS (docs/identity-platforms.md,
"Legacy business systems").

Provincial business systems were built against signed-ticket platforms: they register an app
code, a secret and a callback; the gateway sends their users back with a one-time ticket, and
they pull the identity with ``ticketValidation`` → token → ``getUserInfo``, signed with the same
schemes as the platforms (signing.py). Department systems speak CAS 2.0 / 3.0 instead
(CAS Protocol 3.0 §2.1 ``/login``, §2.5 ``serviceValidate``, §2.8 ``p3/serviceValidate``).

Controls:
- tickets are random, one-time (read-and-delete, CAS §3.1.1 "invalidated after a validation
  attempt", successful or not), bound to one app / service, and live ``ticket_ttl`` seconds;
- a ticket or token of one app is refused for another;
- an app holding a valid token may obtain a one-time proxy ticket (``generateST(proxyapp)``,
  short-lived, bound to the second app) only for the apps listed in its ``may_proxy_to``;
- each app sees only the attributes it is entitled to, masked by the desensitisation rules
  unless configured otherwise; the user id is pairwise per app (OIDC Core §8.1 construction);
- signatures carry a time checked against a skew window, and a nonce cache refuses replays.

Must not: import aiohttp (gateway/http/legacy.py is the web layer); log a ticket, token, secret,
signature or personal data.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Literal, Self
from xml.sax.saxutils import escape

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.identity.citizen import FederatedIdentity
from gateway.identity.config import pairwise_subject
from gateway.identity.sessions import SessionStore
from gateway.identity.signing import (
    ACCESS_KEY_HEADER,
    NonceCache,
    SignatureError,
    SignatureSettings,
    verify_request,
)
from gateway.identity.ticket_soap import header_signed_fields
from gateway.logs import mask_name, mask_text
from gateway.secrets import SecretRef

log = structlog.get_logger("tongban.identity")

Attribute = Literal[
    "userid",
    "name",
    "idtype",
    "idnum",
    "mobile",
    "region",
    "level",
    "authlevel",
    "authlevelscale",
    "applicanttype",
    "usertype",
    "uniscid",
    "regno",
    "orgname",
    "legalperson",
    "agentname",
    "platform",
    "authmethod",
]
MaskRule = Literal["name", "id", "phone", "none"]
DEFAULT_MASKS: dict[str, MaskRule] = {
    "name": "name",
    "agentname": "name",
    "legalperson": "name",
    "idnum": "id",
    "mobile": "phone",
}
"""Desensitisation rules: what each personal attribute looks like unless an app is allowed more."""


class LegacyAppSettings(BaseModel):
    """One legacy system registered at the gateway's ticket or CAS face."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    """Shown on the login page."""
    face: Literal["ticket", "cas"]
    """ticket: app code + secret + callback (province-shaped); cas: CAS 2.0 / 3.0 services."""
    secret: SecretRef | None = None
    """Shared secret of its signed calls ({env} or {file}); ticket face only."""
    callbacks: tuple[str, ...] = ()
    """Ticket face: registered callback URLs (the return address must be one, exactly)."""
    services: tuple[str, ...] = ()
    """CAS face: service URL prefixes this app may use."""
    signature: SignatureSettings = SignatureSettings()
    attributes: tuple[Attribute, ...] = ("userid",)
    """Attributes it is entitled to."""
    unmasked: tuple[Attribute, ...] = ()
    """Entitled attributes it may see unmasked (e.g. the name to bind an account)."""
    ticket_ttl: int = Field(300, ge=10, le=600)
    """Seconds a ticket is valid."""
    token_ttl: int = Field(600, ge=30, le=7200)
    """Seconds a ticket-face token is valid."""
    may_proxy_to: tuple[str, ...] = ()
    """Ticket-face apps this app may obtain one-time proxy tickets for (``generateST``)."""
    proxy_ticket_ttl: int = Field(60, ge=10, le=300)
    """Seconds a proxy ticket it obtains is valid."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.face == "ticket" and (self.secret is None or not self.callbacks):
            raise ValueError("a ticket-face app needs a 'secret' and 'callbacks'")
        if self.face == "cas" and not self.services:
            raise ValueError("a CAS app needs 'services'")
        if self.face == "cas" and self.may_proxy_to:
            raise ValueError("'may_proxy_to' is for ticket-face apps")
        if not set(self.unmasked) <= set(self.attributes):
            raise ValueError("'unmasked' may only name entitled attributes")
        for url in (*self.callbacks, *self.services):
            if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
                raise ValueError("callbacks and services must be https (http only on loopback)")
        return self


def identity_attributes(identity: FederatedIdentity) -> dict[str, str]:
    """What the session keeps for the legacy faces; the ID number as the platform left it
    (masked unless it was configured to be kept)."""
    values = {
        "name": identity.name,
        "idtype": identity.id_type,
        "idnum": identity.id_number,
        "mobile": identity.phone,
        "region": identity.region,
        "level": identity.level,
        "authlevel": identity.level_raw,
        "authlevelscale": identity.level_scale,
        "applicanttype": identity.applicant_type,
        "usertype": identity.person_type,
        "uniscid": identity.credit_code,
        "regno": identity.registration_number,
        "orgname": identity.org_name,
        "legalperson": identity.legal_representative,
        "agentname": identity.operator,
        "platform": identity.platform,
        "authmethod": identity.auth_method,
        "local_id": identity.local_id,
    }
    return {k: v for k, v in values.items() if v}


def _mask(rule: MaskRule, value: str) -> str:
    if rule == "name":
        return mask_name(value)
    if rule == "id":
        value = mask_text(value)
        return value if "*" in value else value[:1] + "*" * max(len(value) - 2, 1) + value[-1:]
    if rule == "phone":
        masked = mask_text(value)
        return masked if masked != value else value[:3] + "*" * max(len(value) - 3, 1)
    return value


class FaceError(Exception):
    """A refused face call: ``code`` is the platform-style result code, ``reason`` safe text."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# Result codes in the platforms' ranges (§1.6): 60xx ticket, 65xx token, 61xx signature.
TICKET_INVALID = FaceError("6001", "ticket_invalid")
TICKET_OTHER_APP = FaceError("6002", "ticket_for_another_app")
TOKEN_INVALID = FaceError("6501", "token_invalid")
TOKEN_OTHER_APP = FaceError("6502", "token_for_another_app")
NOT_ENTITLED = FaceError("6601", "attribute_not_entitled")
PROXY_NOT_ALLOWED = FaceError("6602", "proxy_not_allowed")
_SIGNATURE_CODES = {
    "signature_missing": "6101",
    "signature_invalid": "6101",
    "timestamp_out_of_window": "6102",
    "request_replayed": "6103",
    "unknown_app": "6104",
}


def _key(kind: str, value: str) -> str:
    # Stores hold a hash: a dump of the store holds no usable ticket or token.
    return f"{kind}:{hashlib.sha256(value.encode()).hexdigest()}"


class LegacyFace:
    """The ticket and CAS faces over the SSO session store."""

    def __init__(
        self,
        apps: Mapping[str, LegacyAppSettings],
        store: SessionStore,
        pairwise_secret: SecretStr,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.apps = dict(apps)
        self.store = store
        self._pairwise = pairwise_secret
        self.clock = clock
        window = max((a.signature.window for a in apps.values()), default=300)
        self.nonces = NonceCache(2 * window, clock=clock)

    def _user_id(self, app_id: str, local_id: str) -> str:
        return pairwise_subject(self._pairwise, f"legacy:{app_id}", local_id)

    # --- finding the app ---------------------------------------------------------------------

    def ticket_app(self, app_id: str, return_to: str) -> LegacyAppSettings | None:
        """The ticket-face app, when ``return_to`` is one of its registered callbacks."""
        app = self.apps.get(app_id)
        if app is None or app.face != "ticket" or return_to not in app.callbacks:
            return None
        return app

    def cas_app(self, service: str) -> str | None:
        """The CAS app whose service prefixes include ``service`` (longest prefix wins)."""
        best: tuple[int, str] | None = None
        for app_id, app in self.apps.items():
            if app.face != "cas":
                continue
            for prefix in app.services:
                if service.startswith(prefix) and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), app_id)
        return best[1] if best else None

    # --- issuing tickets ---------------------------------------------------------------------

    async def issue_ticket(self, app_id: str, sid: str, *, service: str = "") -> str:
        """A one-time ticket for ``app_id`` and the session ``sid``."""
        app = self.apps[app_id]
        prefix = "ST-" if app.face == "cas" else ""
        ticket = prefix + secrets.token_urlsafe(32)
        record = {"app": app_id, "sid": sid, "service": service}
        await self.store.put_pending(_key("lt", ticket), record, app.ticket_ttl)
        log.info("legacy_ticket_issued", system=app_id)
        return ticket

    async def _session_attributes(self, sid: str) -> dict[str, str] | None:
        """The session's releasable attributes, only while the SSO session itself lives (a
        logout ends every legacy ticket and token of it)."""
        if await self.store.key_for_sid(sid) is None:
            return None
        return await self.store.get_pending(f"attrs:{sid}")

    # --- the ticket face ---------------------------------------------------------------------

    def verify(
        self,
        *,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        operation: str,
        argument: str,
        soap: bool = False,
    ) -> str:
        """The calling app (signature, time window, replay); ``FaceError`` otherwise.

        Over SOAP the WSDL's element names (app, time, sign) replace the app's parameter names.
        """
        settings: SignatureSettings | None = None
        signed_params = params
        for app_id, app in self.apps.items():
            if app.face != "ticket":
                continue
            candidate = app.signature
            if soap:
                candidate = candidate.model_copy(
                    update={"code_param": "app", "time_param": "time", "sign_param": "sign"}
                )
            if candidate.scheme == "hmac-sha256":
                code = headers.get(ACCESS_KEY_HEADER)
            else:
                code = params.get(candidate.code_param)
            if code == app_id:
                settings = candidate
                if soap and candidate.scheme == "hmac-sha256":
                    signed_params = header_signed_fields(operation, params)
                break
        if settings is None:
            log.warning("legacy_call_refused", reason="unknown_app")
            raise FaceError("6104", "unknown_app")

        def secret_of(code: str) -> str | None:
            app = self.apps.get(code)
            if app is None or app.face != "ticket" or app.secret is None:
                return None
            return app.secret.get_secret_value()

        try:
            return verify_request(
                settings,
                secret_of,
                method=method,
                path=path,
                params=signed_params,
                headers=headers,
                now=self.clock(),
                nonces=self.nonces,
                operation=operation,
                argument=argument,
            )
        except SignatureError as exc:
            log.warning("legacy_call_refused", reason=exc.reason)
            raise FaceError(_SIGNATURE_CODES[exc.reason], exc.reason) from None

    async def ticket_validation(self, app_id: str, ticket: str) -> dict[str, str]:
        """One-time: the ticket is spent by this call whatever its outcome."""
        record = await self.store.take_pending(_key("lt", ticket)) if ticket else None
        if record is None or record["service"]:
            log.warning("legacy_call_refused", system=app_id, reason="ticket_invalid")
            raise TICKET_INVALID
        if record["app"] != app_id:
            log.warning("legacy_call_refused", system=app_id, reason="ticket_for_another_app")
            raise TICKET_OTHER_APP
        attributes = await self._session_attributes(record["sid"])
        if attributes is None:
            raise TICKET_INVALID
        token = secrets.token_urlsafe(32)
        app = self.apps[app_id]
        await self.store.put_pending(
            _key("ltok", token), {"app": app_id, "sid": record["sid"]}, app.token_ttl
        )
        log.info("legacy_ticket_validated", system=app_id)
        return {
            "result": "0",
            "errmsg": "",
            "token": token,
            "userid": self._user_id(app_id, attributes["local_id"]),
        }

    async def get_user_info(
        self, app_id: str, token: str, wanted: tuple[str, ...] = ()
    ) -> dict[str, object]:
        record = await self.store.get_pending(_key("ltok", token)) if token else None
        if record is None:
            raise TOKEN_INVALID
        if record["app"] != app_id:
            log.warning("legacy_call_refused", system=app_id, reason="token_for_another_app")
            raise TOKEN_OTHER_APP
        attributes = await self._session_attributes(record["sid"])
        if attributes is None:
            raise TOKEN_INVALID  # the SSO session ended
        return {
            "result": "0",
            "errmsg": "",
            "user": self.release(app_id, attributes, wanted),
        }

    async def proxy_ticket(self, app_id: str, token: str, target: str) -> dict[str, str]:
        """``generateST(proxyapp)``: a one-time proxy ticket for ``target``, for the user of
        ``app_id``'s valid token, when ``app_id`` may proxy to it. The target validates it with
        its own ``ticketValidation``; it lives ``proxy_ticket_ttl`` seconds and is never logged."""
        record = await self.store.get_pending(_key("ltok", token)) if token else None
        if record is None:
            raise TOKEN_INVALID
        if record["app"] != app_id:
            log.warning("legacy_call_refused", system=app_id, reason="token_for_another_app")
            raise TOKEN_OTHER_APP
        caller = self.apps[app_id]
        second = self.apps.get(target)
        if target not in caller.may_proxy_to or second is None or second.face != "ticket":
            log.warning("legacy_call_refused", system=app_id, reason="proxy_not_allowed")
            raise PROXY_NOT_ALLOWED
        if await self._session_attributes(record["sid"]) is None:
            raise TOKEN_INVALID  # the SSO session ended
        ticket = "PT-" + secrets.token_urlsafe(32)
        await self.store.put_pending(
            _key("lt", ticket),
            {"app": target, "sid": record["sid"], "service": ""},
            min(caller.proxy_ticket_ttl, second.ticket_ttl),
        )
        log.info("legacy_proxy_ticket_issued", system=app_id, target=target)
        return {"result": "0", "errmsg": "", "ticket": ticket}

    def release(
        self, app_id: str, attributes: Mapping[str, str], wanted: tuple[str, ...] = ()
    ) -> dict[str, str]:
        """The entitled attributes, masked; asking for more is refused, not silently trimmed."""
        app = self.apps[app_id]
        if wanted and not set(wanted) <= set(app.attributes):
            log.warning("legacy_call_refused", system=app_id, reason="attribute_not_entitled")
            raise NOT_ENTITLED
        out: dict[str, str] = {}
        for name in wanted or app.attributes:
            if name == "userid":
                out[name] = self._user_id(app_id, attributes["local_id"])
                continue
            value = attributes.get(name)
            if value is None:
                continue
            rule = DEFAULT_MASKS.get(name, "none")
            out[name] = value if name in app.unmasked else _mask(rule, value)
        return out

    # --- the CAS face (CAS Protocol 3.0) -----------------------------------------------------

    async def cas_validate(self, service: str, ticket: str, *, attributes: bool) -> bytes:
        """§2.5 / §2.8: the XML service response; attributes only for p3 (CAS 3.0)."""
        app_id = self.cas_app(service) if service else None
        if not service or not ticket:
            return _cas_failure("INVALID_REQUEST", "service and ticket are required")
        record = await self.store.take_pending(_key("lt", ticket))
        if record is None or not ticket.startswith("ST-"):
            log.warning("legacy_call_refused", reason="ticket_invalid")
            return _cas_failure("INVALID_TICKET", "ticket not recognized")
        if app_id is None or record["app"] != app_id or record["service"] != service:
            log.warning("legacy_call_refused", reason="ticket_for_another_service")
            return _cas_failure("INVALID_SERVICE", "ticket was issued for another service")
        stored = await self._session_attributes(record["sid"])
        if stored is None:
            return _cas_failure("INVALID_TICKET", "ticket not recognized")
        released = self.release(app_id, stored)
        log.info("legacy_ticket_validated", system=app_id)
        user = released.pop("userid", None) or self._user_id(app_id, stored["local_id"])
        extra = ""
        if attributes:
            extra = (
                "<cas:attributes>"
                + "".join(f"<cas:{k}>{escape(v)}</cas:{k}>" for k, v in released.items())
                + "</cas:attributes>"
            )
        return (
            '<cas:serviceResponse xmlns:cas="http://www.yale.edu/tp/cas">'
            f"<cas:authenticationSuccess><cas:user>{escape(user)}</cas:user>{extra}"
            "</cas:authenticationSuccess></cas:serviceResponse>"
        ).encode()


def _cas_failure(code: str, text: str) -> bytes:
    return (
        '<cas:serviceResponse xmlns:cas="http://www.yale.edu/tp/cas">'
        f'<cas:authenticationFailure code="{code}">{escape(text)}</cas:authenticationFailure>'
        "</cas:serviceResponse>"
    ).encode()


def failure_body(error: FaceError) -> bytes:
    """The platform-style error answer (HTTP 200, a result code and a message)."""
    return orjson.dumps({"result": error.code, "errmsg": error.reason})
