"""Settings of the upstream platform kinds beside OpenID Connect, and the union of all.

config/idps.yaml entries are discriminated by ``kind``: ``oidc`` (upstream.py), ``ticket``
(signed-ticket platforms), ``oauth2-quirks`` and ``legal-person``; docs/identity-platforms.md
describes each kind and the deployed behaviours these settings absorb. Everything is validated
once by the settings loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from gateway.identity.citizen import ClaimMapping
from gateway.identity.signing import SignatureSettings
from gateway.identity.upstream import IdpName, OidcIdpSettings
from gateway.secrets import SecretRef

_UNSAFE_ALGS = ("HS", "NONE")
_OPERATIONS = {"validate", "userinfo", "proxy"}


def _url(value: str) -> str:
    parts = urlsplit(value)
    loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not (parts.scheme == "https" or loopback) or parts.fragment:
        raise ValueError("must be an https URL (http only on loopback)")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TicketParams(_Model):
    """Parameter names of the browser legs (they differ per vendor)."""

    app: str = "servicecode"
    """App code on the login redirect (``servicecode`` or ``appmark``)."""
    return_to: str = "goto"
    """Return address on the login redirect (``goto`` or ``gotoUrl``)."""
    ticket: str = "ticket"
    """Ticket on the callback."""
    validate_ticket: str = "st"
    """Ticket parameter of ticketValidation."""
    token: str = "token"
    """Token parameter of getUserInfo (and of the proxy-ticket call)."""
    proxy_app: str = "proxyapp"
    """Parameter naming the second app of the proxy-ticket call (``proxyapp`` / ``appmark``)."""


class ResultCodes(_Model):
    """How a platform says no, often with HTTP 200 (docs/identity-platforms.md, "Errors")."""

    code_field: str = "result"
    """Result code field; a value not in ``ok`` is an error."""
    ok: tuple[str, ...] = ("0",)
    ticket_errors: tuple[int, int] = (6001, 6099)
    """Inclusive range of ticket errors (expired, used, unknown)."""
    token_errors: tuple[int, int] = (6501, 6599)
    """Inclusive range of token errors."""
    error_field: str = "errormsg"
    """A non-empty value here is an error whatever the code says."""
    success_field: str = "success"
    """``false`` here is an error."""


class TicketAnswer(_Model):
    """Where the values sit in the platform's answers (dots walk into objects)."""

    token: str = "token"
    """ticketValidation → the token."""
    user_id: str = "userid"
    """ticketValidation → the platform user id (checked against getUserInfo's)."""
    attributes: str = ""
    """getUserInfo → the object holding the attributes ('' = the answer itself)."""
    proxy_ticket: str = "ticket"
    """The proxy-ticket call (``generateST`` / ``generateTicket``) → the proxy ticket."""
    joined: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """New attributes made of several, joined by '/' (Gansu's level is ``isauth/authstate``)."""
    issued_at: str | None = None
    """ticketValidation → when the platform issued the ticket; with it the gateway enforces
    ``max_ticket_age`` on the ticket itself, not only on the login."""
    issued_at_format: Literal["yyyyMMddHHmmss", "epoch", "epoch_ms", "iso8601"] = "yyyyMMddHHmmss"
    """How ``issued_at`` is written (yyyyMMddHHmmss in China Standard Time, seconds or
    milliseconds since 1970, or ISO 8601 with an offset)."""


class TicketCall(_Model):
    """The names of one back-channel call, as the platform spells them: they differ per
    platform and per transport (``ticketValidate(appmark, ticket, time, sign)`` on one platform,
    ``ticketValidation(app, arg, time, sign, datatype)`` on another). A name left out takes the
    default of the transport; a name set to null is not sent at all."""

    name: str = Field(min_length=1)
    """Operation name: the last path segment over HTTP, the WSDL operation over SOAP."""
    argument: str | None = None
    """Parameter or element carrying the ticket or token (HTTP: params.validate_ticket /
    params.token; SOAP: ``arg``)."""
    app: str | None = None
    """Where the app code goes (HTTP: signature.code_param; SOAP: ``app``)."""
    time: str | None = None
    """Where the time goes (HTTP: signature.time_param; SOAP: ``time``)."""
    sign: str | None = None
    """Where the signature goes (HTTP: signature.sign_param; SOAP: ``sign``)."""
    datatype: str | None = None
    """Parameter asking for JSON answers (``datatype``); null when the platform has none."""
    datatype_value: str = "json"
    proxy_app: str | None = None
    """The proxy-ticket call's second app (HTTP: params.proxy_app; SOAP: ``proxyapp``)."""
    extra: dict[str, str] = Field(default_factory=dict)
    """Fixed further parameters the platform wants on this call."""
    wsdl: str | None = None
    """SOAP: this call's own vendored WSDL, for a platform that deploys one web service (with
    its own namespace) per operation; default: the platform's ``wsdl``."""
    service_url: str | None = None
    """This call's own endpoint (SOAP) or base URL (HTTP); default: the platform's."""

    @field_validator("service_url")
    @classmethod
    def _call_url(cls, value: str | None) -> str | None:
        return None if value is None else _url(value)


@dataclass(frozen=True, slots=True)
class ResolvedCall:
    """A ``TicketCall`` with every default filled in; None: not sent."""

    name: str
    argument: str
    app: str | None
    time: str | None
    sign: str | None
    datatype: str | None
    datatype_value: str
    proxy_app: str
    extra: tuple[tuple[str, str], ...]
    wsdl: str | None
    service_url: str


def _default_calls() -> dict[str, str | TicketCall]:
    return {"validate": "ticketValidation", "userinfo": "getUserInfo"}


class TicketIdpSettings(_Model):
    """A signed-ticket platform: ticket → ticketValidation → token → getUserInfo."""

    kind: Literal["ticket"]
    province: str = Field(pattern=r"^[0-9]{2}$")
    name: IdpName
    login_url: str
    """The platform's login page."""
    service_url: str
    """HTTP: base URL of the form endpoints (…/ticketValidation); SOAP: the endpoint address."""
    transport: Literal["http", "soap"] = "http"
    wsdl: str | None = None
    """Vendored WSDL (relative to the configuration directory), SOAP only."""
    binding: str | None = Field(None, pattern=r"^\{[^}]*\}[^{}]+$")
    """SOAP binding QName as '{namespace}Name'; may be left out when the WSDL has one."""
    app_code: str = Field(min_length=1)
    """The gateway's app code at the platform."""
    app_secret: SecretRef
    """The shared secret of the signatures ({env} or {file})."""
    signature: SignatureSettings = SignatureSettings()
    params: TicketParams = TicketParams()
    results: ResultCodes = ResultCodes()
    answer: TicketAnswer = TicketAnswer()
    operations: dict[str, str | TicketCall] = Field(default_factory=_default_calls)
    """``validate``, ``userinfo`` and optionally ``proxy`` (the proxy-ticket call,
    ``generateST`` / ``generateTicket``): each the operation name, or a ``TicketCall`` naming
    its parameters or elements as this platform spells them."""
    state_echo: bool = True
    """false: the platform sends the browser back to the registered address without the
    gateway's ``state``; the return leg is then bound to the browser's login cookie."""
    max_ticket_age: int = Field(300, ge=10, le=3600)
    """Seconds a ticket is accepted: after the login began, and after ``answer.issued_at`` when
    the platform says when it issued the ticket. The platform's own expiry is not relied on."""
    used_ticket_retention: int = Field(86_400, ge=86_400)
    """Seconds the gateway remembers a ticket it has seen (at least a day: some platforms
    compare expiry in whole days and never consume tickets), in the session store, so every
    instance refuses a ticket any of them has used."""
    keep_id_number: bool = False
    claims: ClaimMapping

    _urls = field_validator("login_url", "service_url")(_url)

    @model_validator(mode="after")
    def _transport(self) -> Self:
        if not {"validate", "userinfo"} <= set(self.operations) <= _OPERATIONS:
            raise ValueError("operations: name 'validate' and 'userinfo', optionally 'proxy'")
        if self.transport == "soap" and not all(
            self.call(operation).wsdl for operation in self.operations
        ):
            raise ValueError("a SOAP platform needs a vendored 'wsdl' file (or one per call)")
        # hmac-sha256 over SOAP signs the HTTP request of the SOAP post (ticket_soap.py).
        return self

    def call(self, operation: str) -> ResolvedCall:
        """The names of ``operation`` ('validate', 'userinfo', 'proxy') with the defaults of
        this platform's transport filled in."""
        given = self.operations[operation]
        call = TicketCall(name=given) if isinstance(given, str) else given
        soap = self.transport == "soap"
        argument = self.params.validate_ticket if operation == "validate" else self.params.token
        defaults = {
            "argument": "arg" if soap else argument,
            "app": "app" if soap else self.signature.code_param,
            "time": "time" if soap else self.signature.time_param,
            "sign": "sign" if soap else self.signature.sign_param,
            "datatype": "datatype",
            "proxy_app": "proxyapp" if soap else self.params.proxy_app,
        }
        named = {
            key: getattr(call, key) if key in call.model_fields_set else default
            for key, default in defaults.items()
        }
        return ResolvedCall(
            name=call.name,
            argument=named["argument"] or defaults["argument"] or "arg",
            app=named["app"],
            time=named["time"],
            sign=named["sign"],
            datatype=named["datatype"],
            datatype_value=call.datatype_value,
            proxy_app=named["proxy_app"] or defaults["proxy_app"] or "proxyapp",
            extra=tuple(sorted(call.extra.items())),
            wsdl=call.wsdl or self.wsdl,
            service_url=call.service_url or self.service_url,
        )


class AesBody(_Model):
    """An AES-encrypted user-info body (per-client key): base64 of IV ‖ AES-CBC(PKCS7)."""

    field: str = "data"
    """Field of the answer holding the ciphertext."""
    key: SecretRef
    """16, 24 or 32 bytes (hex or text)."""


class BodySignature(_Model):
    """A signature beside the user-info body (``signdata``)."""

    field: str = "signdata"
    over: str = "data"
    """Field whose exact text is signed."""
    algorithm: Literal["hmac-sha256", "md5"] = "hmac-sha256"
    secret: SecretRef


class OAuth2QuirksIdpSettings(_Model):
    """An OAuth2-like platform: token by GET with the secret in the query, tokeninfo user data."""

    kind: Literal["oauth2-quirks"]
    province: str = Field(pattern=r"^[0-9]{2}$")
    name: IdpName
    authorize_url: str
    token_url: str
    tokeninfo_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    scope: str | None = None
    token_method: Literal["GET", "POST"] = "GET"
    extra_token_params: dict[str, str] = Field(default_factory=dict)
    """Fixed extra parameters of the token request (e.g. ``service: initService``)."""
    token_field: str = "access_token"
    kv_lists: tuple[str, ...] = ()
    """Paths of lists of ``"k=v"`` strings turned into objects (e.g. ``userobj.extproperties``)."""
    encrypted: AesBody | None = None
    signed: BodySignature | None = None
    keep_id_number: bool = False
    claims: ClaimMapping

    _urls = field_validator("authorize_url", "token_url", "tokeninfo_url")(_url)


class LegalPersonIdpSettings(_Model):
    """A legal-person platform posting a signed assertion (JWS) back to the gateway."""

    kind: Literal["legal-person"]
    province: str = Field(pattern=r"^[0-9]{2}$")
    name: IdpName
    login_url: str
    app_code: str = Field(min_length=1)
    issuer: str
    """``iss`` of the assertions."""
    jwks_uri: str
    """The platform's public keys."""
    audience: str = Field(min_length=1)
    """``aud`` the assertion must carry: the gateway's id at the platform."""
    algorithms: tuple[str, ...] = ("ES256", "RS256")
    max_age: int = Field(300, ge=30, le=900)
    """Seconds an assertion is accepted after its ``iat``."""
    keep_id_number: bool = False
    claims: ClaimMapping

    _urls = field_validator("login_url", "jwks_uri")(_url)

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(a.upper().startswith(_UNSAFE_ALGS) for a in value):
            raise ValueError("pin asymmetric algorithms only (no HS*, no none)")
        return value


AnyIdpSettings = (
    OidcIdpSettings | TicketIdpSettings | OAuth2QuirksIdpSettings | LegalPersonIdpSettings
)


class IdpEntry(RootModel[Annotated[AnyIdpSettings, Field(discriminator="kind")]]):
    """One idps.yaml entry, of whichever kind it declares."""
