"""Shared REST adapter: JSON over one aiohttp ``ClientSession`` per system.

``map_aiohttp_errors`` is the only place where aiohttp's exceptions (and this module's own
complaints about an answer) become ours, through ``AIOHTTP_ERROR_TABLE``:

    foreign exception                             ours                     reached_backend
    HTTP 429 (refused before any processing)      BackendRateLimited       False
    HTTP 5xx (503 may carry Retry-After)          BackendServerError       True
    HTTP 4xx (after one token refresh on 401)     BackendRejected          True
    HTTP 1xx / 3xx (redirects are not followed)   BackendBadResponse       True
    malformed JSON, wrong content type            BackendBadResponse       True
    connect timeout (also waiting for the pool)   BackendTimeout           False
    connection refused, DNS failure, TLS set-up   BackendUnavailable       False
    read timeout (also between trickled bytes)    BackendTimeout           True
    disconnect, reset, protocol error mid-answer  BackendUnavailable       True

Why aiohttp's client and not httpx: on the same back-end httpx (even on aiohttp's engine via
httpx-aiohttp) cost 2.6–3.5× the CPU of aiohttp's own client per request; see
docs/performance.md. Bodies are read against ``max_response_bytes``; nothing here logs
payloads or secrets.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import json
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import quote, quote_plus

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from yarl import URL

from adapters.eager_send import REQUEST_CLASS
from adapters.lean_read import LeanAnswer, install
from adapters.lean_send import LeanSender
from gateway.adapter import (
    AdapterConfigError,
    BackendBadResponse,
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendResponseTooLarge,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    Call,
    CallContext,
    Reply,
    Secret,
    SystemSpec,
    digest,
    validation_problems,
)

__all__ = [
    "AIOHTTP_ERROR_TABLE",
    "ConfigModel",
    "HttpStatusError",
    "NoAuth",
    "PreparedRequest",
    "RestAdapter",
    "RestAdapterFactory",
    "SecretValue",
    "UnexpectedContentType",
    "add_context_headers",
    "build_rest_adapter",
    "check_status",
    "config_error",
    "context_headers",
    "error_for_status",
    "header_safe",
    "map_aiohttp_errors",
    "media_type",
    "open_session",
    "parse_auth",
    "parse_blocks",
    "parse_retry_after",
    "read_limited",
    "read_timer",
    "translate_aiohttp_error",
    "whole_body",
]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_USER_AGENT = "tongban-gateway"


# --- configuration ----------------------------------------------------------------------------


def _must_be_secret(value: object) -> object:
    # Never echo the value: an inline secret in the config is exactly what must not leak.
    if not isinstance(value, Secret):
        raise ValueError("must be a secret given as {env: NAME} or {file: PATH}")
    return value


SecretValue = Annotated[Secret, BeforeValidator(_must_be_secret)]


class ConfigModel(BaseModel):
    """Base of the adapters' own config blocks: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class RestOperation(ConfigModel):
    """One operation of a REST system."""

    method: Literal["GET", "POST", "PUT"]
    """HTTP method."""
    path: str = Field(pattern=r"^/")
    """Path under the system's address; ``{name}`` placeholders are filled from the payload."""

    @field_validator("path")
    @classmethod
    def _placeholders_ok(cls, value: str) -> str:
        rest = _PLACEHOLDER.sub("", value)
        if "{" in rest or "}" in rest:
            raise ValueError("placeholders must look like {field_name}")
        return value

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(_PLACEHOLDER.findall(self.path))


class NoAuth(ConfigModel):
    type: Literal["none"]


class ApiKeyAuth(ConfigModel):
    type: Literal["api_key"]
    header: str = "X-API-Key"
    """Header that carries the key."""
    key: SecretValue
    """The key."""


class OAuth2ClientCredentials(ConfigModel):
    type: Literal["oauth2_client_credentials"]
    token_url: str = Field(pattern=r"^https?://")
    """The system's token endpoint (RFC 6749 §4.4)."""
    client_id: str = Field(min_length=1)
    """Our client id at the system."""
    client_secret: SecretValue
    """Our client secret."""
    scope: str | None = None
    """Scope to ask for, if the system wants one."""
    token_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How the client authenticates to the token endpoint (RFC 6749 §2.3.1)."""


class HmacAuth(ConfigModel):
    type: Literal["hmac"]
    key_id: str = Field(min_length=1)
    """Sent as X-Tb-Key so the system knows which secret to check with."""
    secret: SecretValue
    """Shared HMAC-SHA256 secret."""


RestAuth = NoAuth | ApiKeyAuth | OAuth2ClientCredentials | HmacAuth
_AUTH_MODELS: Mapping[str, type[ConfigModel]] = {
    "none": NoAuth,
    "api_key": ApiKeyAuth,
    "oauth2_client_credentials": OAuth2ClientCredentials,
    "hmac": HmacAuth,
}


class RestOptions(ConfigModel):
    headers: dict[str, str] = Field(default_factory=dict)
    """Fixed extra headers the system wants on every call (ASCII only)."""

    @field_validator("headers")
    @classmethod
    def _ascii_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not (name.isascii() and text.isascii()):
                raise ValueError(f"header {name!r} must be ASCII")
        return value


@dataclass(frozen=True, slots=True)
class RestConfig:
    auth: RestAuth
    options: RestOptions
    operations: Mapping[str, RestOperation]


def config_error(prefix: str, exc: ValidationError, model: Any = None) -> AdapterConfigError:
    """Every problem of a pydantic error, in one AdapterConfigError (``all()``); ``model``, the
    model validated, lets an unknown key get the nearest known one. The input is never echoed."""
    problems = validation_problems(model, exc, prefix.split("."))
    return AdapterConfigError.of(
        [AdapterConfigError(where, message) for where, message in problems]
    )


def parse_auth(block: Mapping[str, Any], models: Mapping[str, type[ConfigModel]]) -> ConfigModel:
    """The auth block validated by the model its ``type`` names (absent type = none)."""
    kind = block.get("type", "none")
    model = models.get(str(kind))
    if model is None:
        raise AdapterConfigError("auth.type", f"must be one of {sorted(models)}")
    try:
        return model.model_validate({"type": "none", **block})
    except ValidationError as exc:
        raise config_error("auth", exc, model) from None


_O = TypeVar("_O", bound=ConfigModel)
_P = TypeVar("_P", bound=ConfigModel)


@dataclass(frozen=True, slots=True)
class SystemBlocks(Generic[_O, _P]):
    """A system's auth, options and operations blocks, each validated by its adapter's model."""

    auth: ConfigModel
    options: _O
    operations: Mapping[str, _P]


def parse_blocks(
    spec: SystemSpec,
    auth_models: Mapping[str, type[ConfigModel]],
    options_model: type[_O],
    operation_model: type[_P],
    *,
    protocol: str,
    problems: list[AdapterConfigError] | None = None,
) -> SystemBlocks[_O, _P]:
    """Validate every block, collecting every problem (after any already in ``problems``);
    ``AdapterConfigError`` carries them all."""
    problems = list(problems or [])
    auth: ConfigModel = NoAuth(type="none")
    try:
        auth = parse_auth(spec.auth, auth_models)
    except AdapterConfigError as exc:
        problems += exc.all()
    options = options_model()
    try:
        options = options_model.model_validate(dict(spec.options))
    except ValidationError as exc:
        problems += config_error("options", exc, options_model).all()
    if not spec.operations:
        problems.append(
            AdapterConfigError("operations", f"a {protocol} system needs at least one operation")
        )
    operations: dict[str, _P] = {}
    for name, block in spec.operations.items():
        try:
            operations[name] = operation_model.model_validate(dict(block))
        except ValidationError as exc:
            problems += config_error(f"operations.{name}", exc, operation_model).all()
    if problems:
        raise AdapterConfigError.of(problems)
    return SystemBlocks(auth, options, operations)


def parse_rest_config(spec: SystemSpec) -> RestConfig:
    blocks = parse_blocks(spec, _AUTH_MODELS, RestOptions, RestOperation, protocol="REST")
    auth = blocks.auth
    assert isinstance(auth, NoAuth | ApiKeyAuth | OAuth2ClientCredentials | HmacAuth)
    return RestConfig(auth=auth, options=blocks.options, operations=blocks.operations)


# --- the one translation boundary -------------------------------------------------------------


class UnexpectedContentType(Exception):
    """The answer's media type is not what the protocol carries."""


class HttpStatusError(Exception):
    """A non-2xx answer (its body left unread: it is not ours to keep)."""

    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds from now (RFC 9110 §10.2.3: delay-seconds or an HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now(), 0.0)


def error_for_status(status: int, retry_after: float | None, system: str) -> BackendError:
    """Our error for a non-2xx HTTP status (shared with the SOAP adapter)."""
    detail = f"HTTP {status} from system {system}."
    if status == 429:
        # 429 is a refusal before any processing (RFC 6585 §4), so resending is safe.
        return BackendRateLimited(detail, reached_backend=False, retry_after=retry_after)
    if status >= 500:
        hint = retry_after if status == 503 else None
        return BackendServerError(detail, reached_backend=True, retry_after=hint)
    if status >= 400:
        return BackendRejected(detail, reached_backend=True)
    return BackendBadResponse(
        f"Unexpected HTTP {status} from system {system}.", reached_backend=True
    )


def _from_status(exc: BaseException, system: str) -> BackendError:
    assert isinstance(exc, HttpStatusError)
    return error_for_status(exc.status, parse_retry_after(exc.retry_after), system)


_Build = Callable[[BaseException, str], BackendError]


def _as(cls: type[BackendError], template: str, *, reached: bool) -> _Build:
    def build(exc: BaseException, system: str) -> BackendError:
        return cls(template.format(system=system), reached_backend=reached)

    return build


_UNREACHABLE = "System {system} cannot be reached."
_CONNECT_SLOW = "Connecting to system {system} timed out."
_READ_SLOW = "System {system} did not answer in time."
_BROKEN = "System {system} broke off the exchange."
_MALFORMED = "System {system} sent an answer that could not be read."

# Most specific first; the first row whose type matches wins. aiohttp's timeouts are also
# asyncio.TimeoutError, and its connector errors are also OSError: their rows come before any
# broader one.
AIOHTTP_ERROR_TABLE: tuple[tuple[type[BaseException], _Build], ...] = (
    (HttpStatusError, _from_status),
    (UnexpectedContentType, _as(BackendBadResponse, _MALFORMED, reached=True)),
    (json.JSONDecodeError, _as(BackendBadResponse, _MALFORMED, reached=True)),
    (UnicodeDecodeError, _as(BackendBadResponse, _MALFORMED, reached=True)),
    # Connect timeout and pool wait: nothing was sent.
    (aiohttp.ConnectionTimeoutError, _as(BackendTimeout, _CONNECT_SLOW, reached=False)),
    # sock_read: no byte for read_timeout seconds, before or inside the answer.
    (aiohttp.ServerTimeoutError, _as(BackendTimeout, _READ_SLOW, reached=True)),
    # Refused, DNS failure (ClientConnectorDNSError), TLS handshake: no connection, nothing sent.
    (aiohttp.ClientConnectorError, _as(BackendUnavailable, _UNREACHABLE, reached=False)),
    (aiohttp.ServerDisconnectedError, _as(BackendUnavailable, _BROKEN, reached=True)),
    (aiohttp.ClientPayloadError, _as(BackendUnavailable, _BROKEN, reached=True)),
    (aiohttp.ClientResponseError, _as(BackendUnavailable, _BROKEN, reached=True)),
    (aiohttp.ClientConnectionError, _as(BackendUnavailable, _BROKEN, reached=True)),
)


def translate_aiohttp_error(exc: BaseException, system: str) -> BackendError | None:
    """Our error for a foreign one, or None when the table has no row for it."""
    for foreign, build in AIOHTTP_ERROR_TABLE:
        if isinstance(exc, foreign):
            return build(exc, system)
    return None


class map_aiohttp_errors:  # lower case: used as the function it was, ``with map_aiohttp_errors()``
    """Translate aiohttp failures and bad answers into BackendErrors with safe details.

    ``request_sent=False`` marks a preliminary exchange (a token request): whatever fails
    there, the call itself never reached the back-end. A class rather than a generator
    context manager: every routed REST call enters one, and a generator's wrapper costs
    several Python calls more on the way in and out.
    """

    __slots__ = ("_request_sent", "_system")

    def __init__(self, system: str, *, request_sent: bool = True) -> None:
        self._system = system
        self._request_sent = request_sent

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, Exception):
            return  # nothing raised, or a cancellation or exit: not ours to translate
        if isinstance(exc, BackendError):
            if not self._request_sent:
                exc.reached_backend = False
            return
        error = translate_aiohttp_error(exc, self._system)
        if error is None:
            return
        if not self._request_sent:
            error.reached_backend = False
        raise error from exc


# --- HTTP plumbing shared with the SOAP adapter -----------------------------------------------


def read_timer(spec: SystemSpec) -> float | None:
    """The ``sock_read`` timeout of a system's session: ``read_timeout``, unless the calls are
    capped (``attempt_timeout``) no later than it would fire. aiohttp arms its read timer when
    the request has been sent and again for every piece of the answer, each time after the
    attempt's cap was started; one ``read_timeout`` long or longer can only fire at the cap or
    after it, when the attempt has already ended as a timeout. Left out then: it would be a
    timer armed and cancelled several times per call for nothing."""
    capped = spec.attempt_timeout is not None and spec.attempt_timeout <= spec.read_timeout
    return None if capped else spec.read_timeout


def session_timeout(spec: SystemSpec) -> aiohttp.ClientTimeout:
    """Built once per system. ``sock_connect`` caps the TCP (and TLS) set-up; ``connect`` caps
    waiting for a pooled connection plus that set-up (httpx's pool timeout was the read
    timeout); ``sock_read`` caps every wait for bytes, the first one included, when it can fire
    before the attempt's cap (``read_timer``). No total: the gateway's per-attempt timeout is
    the cap on a whole exchange."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=spec.connect_timeout + spec.read_timeout,
        sock_connect=spec.connect_timeout,
        sock_read=read_timer(spec),
    )


def open_session(spec: SystemSpec, *, headers: Mapping[str, str]) -> aiohttp.ClientSession:
    """The one client of a system: keep-alive pool of ``concurrency_limit`` connections, no
    cookies, no environment proxies, no decompression; callers pass ``allow_redirects=False``.
    The request body is written as the request is sent, not a loop turn later
    (``adapters/eager_send.py``)."""
    connector = install(aiohttp.TCPConnector(limit=spec.concurrency_limit, limit_per_host=0))
    return aiohttp.ClientSession(
        connector=connector,
        request_class=REQUEST_CLASS,
        timeout=session_timeout(spec),
        headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", **headers},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
        raise_for_status=False,
    )


def check_status(response: aiohttp.ClientResponse | LeanAnswer) -> None:
    """Raise HttpStatusError for a non-2xx answer; its body stays unread."""
    status = response.status
    if not 200 <= status < 300:
        raise HttpStatusError(status, response.headers.get("Retry-After"))


async def read_limited(response: aiohttp.ClientResponse, limit: int, system: str) -> bytes:
    """The whole body, refusing it as soon as it grows past ``limit`` bytes.

    With a Content-Length the parser never hands over more than it declares, so one read is
    enough; without one (chunked, or delimited by close) it is read piece by piece."""
    declared = response.content_length
    if declared is not None:
        if declared > limit:
            raise _too_large(system, limit)
        return await response.read()
    body = bytearray()
    stream = response.content
    while chunk := await stream.readany():
        body += chunk
        if len(body) > limit:
            raise _too_large(system, limit)
    return bytes(body)


def whole_body(answer: LeanAnswer, limit: int, system: str) -> bytes:
    """``read_limited`` of an answer read whole: refused on the same terms (a declared length
    past ``limit``, else a body past it)."""
    declared = answer.content_length
    if declared is not None:
        if declared > limit:
            raise _too_large(system, limit)
    elif len(answer.body) > limit:
        raise _too_large(system, limit)
    return answer.body


def _too_large(system: str, limit: int) -> BackendResponseTooLarge:
    return BackendResponseTooLarge(
        f"The answer of system {system} exceeds {limit} bytes.", reached_backend=True
    )


def media_type(headers: CIMultiDictProxy[str]) -> str:
    """The media type of an answer, lower case, without parameters ('' when absent)."""
    value = headers.get("Content-Type", "")
    return value.split(";", maxsplit=1)[0].strip().lower()


# --- context headers --------------------------------------------------------------------------

_CONTEXT_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Request-ID", "request_id"),
    ("X-Tongban-Purpose", "purpose"),
    ("X-Tongban-Service", "service"),
    ("X-Tongban-Case-Id", "case_id"),
    ("X-Tongban-Authorisation", "authorisation_ref"),
    ("X-Tongban-Principal", "principal"),
    ("X-Tongban-Actor", "actor"),
    ("X-Tongban-Level", "level"),
    ("X-Tongban-Assertion", "identity_assertion"),
    ("X-Tongban-Subjects", "subject_hashes"),
    ("X-Tongban-Source-Province", "receiving_province"),
    ("X-Tongban-Client", "client"),
    ("Idempotency-Key", "idempotency_key"),
)
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
"""What passes unchanged. Checked without the regular expression (``str.isascii``,
``str.isprintable``, ``str.strip``: for ASCII, printable is 0x20-0x7E and the only whitespace
among those is the space): the same answer for less than half the cost (22 k instructions
against 10 k for the bench call's nine values). The pattern stays the rule's statement and the
tests' reference."""
_HEADER_SAFE = "!#$&'()*+,/:;=?@[]^_`{|}~-."


def header_safe(value: str) -> str:
    """Visible ASCII passes unchanged; anything else (a Chinese purpose, say) is sent as
    percent-encoded UTF-8, because header values must be ASCII."""
    if value.isascii() and value.isprintable() and value.strip() == value:
        return value  # what _VISIBLE_ASCII matches, or '' (quoted, still '')
    return quote(value, safe=_HEADER_SAFE)


_CONTEXT_NAMES = tuple(name for name, _ in _CONTEXT_HEADERS)
_CONTEXT_VALUES = operator.attrgetter(*(attribute for _, attribute in _CONTEXT_HEADERS))


def add_context_headers(headers: dict[str, str], context: CallContext) -> dict[str, str]:
    """``headers`` with the call context added (``header_safe`` applied to each value); a field
    that is None is left out. One pass for a call's thirteen fields: the values are read in one
    C call and the check of ``header_safe`` is made inline."""
    for name, value in zip(_CONTEXT_NAMES, _CONTEXT_VALUES(context), strict=True):
        if value is not None:
            text = str(value)
            # header_safe inline: printable ASCII without a space at either end
            if text.isascii() and text.isprintable() and text.strip() == text:
                headers[name] = text
            else:
                headers[name] = quote(text, safe=_HEADER_SAFE)
    return headers


def context_headers(context: CallContext) -> dict[str, str]:
    """The call context as headers; a field that is None is left out."""
    return add_context_headers({}, context)


# --- authentication ---------------------------------------------------------------------------


@dataclass(slots=True)
class PreparedRequest:
    """What goes over the wire, and the bytes its digest is taken of."""

    method: str
    url: URL
    path: str
    """The request path as sent (percent-encoded), without the query."""
    params: tuple[tuple[str, str], ...]
    """Query pairs before encoding (GET only)."""
    headers: dict[str, str]
    body: bytes | None
    digest_bytes: bytes


class Authenticator(Protocol):
    refreshable: bool
    header_names: tuple[str, ...]
    """The headers ``apply`` may set."""

    async def apply(self, request: PreparedRequest, *, refresh: bool) -> None: ...


class _NoAuthenticator:
    refreshable = False
    header_names: tuple[str, ...] = ()

    async def apply(self, request: PreparedRequest, *, refresh: bool) -> None:
        return None


class _ApiKeyAuthenticator:
    refreshable = False

    def __init__(self, config: ApiKeyAuth) -> None:
        self._header = config.header
        self.header_names: tuple[str, ...] = (config.header,)
        self._key = config.key

    async def apply(self, request: PreparedRequest, *, refresh: bool) -> None:
        request.headers[self._header] = self._key.reveal()


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Query pairs sorted and percent-encoded, as the HMAC string-to-sign wants them."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(pairs))


class _HmacAuthenticator:
    refreshable = False
    header_names: tuple[str, ...] = ("X-Tb-Key", "X-Tb-Date", "X-Tb-Signature")

    def __init__(self, config: HmacAuth) -> None:
        self._key_id = config.key_id
        self._secret = config.secret

    async def apply(self, request: PreparedRequest, *, refresh: bool) -> None:
        date = email.utils.formatdate(usegmt=True)
        to_sign = "\n".join(
            (
                request.method,
                request.path,
                canonical_query(request.params),
                date,
                hashlib.sha256(request.body or b"").hexdigest(),
            )
        )
        mac = hmac.new(self._secret.reveal().encode(), to_sign.encode(), hashlib.sha256)
        request.headers["X-Tb-Key"] = self._key_id
        request.headers["X-Tb-Date"] = date
        request.headers["X-Tb-Signature"] = base64.b64encode(mac.digest()).decode("ascii")


class _OAuth2Authenticator:
    """Client credentials grant (RFC 6749 §4.4), token cached until shortly before expiry.

    Written by hand on the system's own session: the grant is one form POST.
    """

    refreshable = True
    header_names: tuple[str, ...] = ("Authorization",)

    def __init__(
        self,
        config: OAuth2ClientCredentials,
        session: aiohttp.ClientSession,
        spec: SystemSpec,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._session = session
        self._system = spec.id
        self._limit = spec.max_response_bytes
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def apply(self, request: PreparedRequest, *, refresh: bool) -> None:
        used = request.headers.get("Authorization")
        async with self._lock:
            # Only the first of many concurrent 401s fetches: the others see a new token already.
            stale = refresh and used == f"Bearer {self._token}"
            if stale or self._token is None or self._clock() >= self._expires_at:
                await self._fetch()
            request.headers["Authorization"] = f"Bearer {self._token}"

    async def _fetch(self) -> None:
        cfg = self._config
        form = {"grant_type": "client_credentials"}
        if cfg.scope:
            form["scope"] = cfg.scope
        headers = {"Accept": "application/json"}
        if cfg.token_auth == "client_secret_basic":
            pair = f"{quote_plus(cfg.client_id)}:{quote_plus(cfg.client_secret.reveal())}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = cfg.client_id
            form["client_secret"] = cfg.client_secret.reveal()
        with map_aiohttp_errors(self._system, request_sent=False):
            async with self._session.post(
                cfg.token_url, data=form, headers=headers, allow_redirects=False
            ) as response:
                check_status(response)
                body = json.loads(await read_limited(response, self._limit, self._system))
        token = body.get("access_token") if isinstance(body, dict) else None
        kind = str(body.get("token_type", "")).lower() if isinstance(body, dict) else ""
        if not isinstance(token, str) or not token or kind != "bearer":
            raise BackendBadResponse(
                f"The token answer of system {self._system} is not usable.", reached_backend=False
            )
        lifetime = body.get("expires_in", 60)
        lifetime = float(lifetime) if isinstance(lifetime, int | float) else 60.0
        self._token = token
        self._expires_at = self._clock() + lifetime - min(30.0, lifetime / 10)


def _authenticator(
    config: RestAuth, session: aiohttp.ClientSession, spec: SystemSpec
) -> Authenticator:
    if isinstance(config, ApiKeyAuth):
        return _ApiKeyAuthenticator(config)
    if isinstance(config, HmacAuth):
        return _HmacAuthenticator(config)
    if isinstance(config, OAuth2ClientCredentials):
        return _OAuth2Authenticator(config, session, spec)
    return _NoAuthenticator()


# --- the adapter ------------------------------------------------------------------------------


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _refuse(detail: str) -> BackendRejected:
    # The payload does not fit the system's operation: nothing was sent, so nothing to retry.
    return BackendRejected(detail, reached_backend=False)


# One answer as the adapter keeps it: status, media type, the exact body bytes.
_Answer = tuple[int, str, bytes]


@dataclass(frozen=True, slots=True)
class _OperationPlan:
    """What a call of one operation needs that does not depend on the call, worked out once."""

    method: str
    path: str
    """The operation's path as configured (placeholders unfilled)."""
    placeholders: tuple[str, ...]
    full_path: str
    """The request path without placeholders: the base path and ``path``."""
    url: URL
    """The request URL without placeholders (a POST or PUT without them is sent to it)."""


class RestAdapter:
    """One REST system: ``call`` fills the operation's path, sends JSON, returns parsed JSON."""

    def __init__(
        self, spec: SystemSpec, config: RestConfig, session: aiohttp.ClientSession
    ) -> None:
        self._spec = spec
        self._system = spec.id
        self._limit = spec.max_response_bytes
        self._config = config
        self._session = session
        self._auth = _authenticator(config.auth, session, spec)
        # Nothing to add to a request without authentication: its apply is not awaited at all.
        self._auth_applies = not isinstance(self._auth, _NoAuthenticator)
        # Normalised once (IDNA host, percent-encoded path), so that the already-encoded
        # operation paths can be appended and sent as they are.
        base = URL(spec.address.rstrip("/"))
        self._base_url = str(base)
        self._base_path = base.raw_path.rstrip("/")
        self._fixed_headers = dict(config.options.headers)
        self._plans = {
            name: _OperationPlan(
                operation.method,
                operation.path,
                operation.placeholders,
                self._base_path + operation.path,
                URL(self._base_url + operation.path, encoded=True),
            )
            for name, operation in config.operations.items()
        }
        # The requests sent past ClientSession.request's general layers, when that sends the
        # same (adapters/lean_send.py); else (None) through it.
        self._lean = LeanSender.for_(
            session,
            base,
            (*self._fixed_headers, *_CONTEXT_NAMES, "Content-Type", *self._auth.header_names),
        )

    def prepare(self, call: Call) -> PreparedRequest:
        plan = self._plans.get(call.operation)
        if plan is None:
            raise _refuse(f"System {self._system} has no operation {call.operation!r}.")
        payload = dict(call.payload)
        path = plan.path
        if plan.placeholders:
            values: dict[str, str] = {}
            for name in plan.placeholders:
                text = _scalar_text(payload.pop(name, None))
                if text is None:
                    raise _refuse(f"Operation {call.operation!r} needs a plain value for {name!r}.")
                values[name] = quote(text, safe="")
            path = _PLACEHOLDER.sub(lambda m: values[m[1]], path)
        headers = add_context_headers(dict(self._fixed_headers), call.context)
        if plan.method == "GET":
            params: list[tuple[str, str]] = []
            for key, value in payload.items():
                if value is None:
                    continue
                text = _scalar_text(value)
                if text is None:
                    raise _refuse(f"Operation {call.operation!r} takes only plain query values.")
                params.append((str(key), text))
            query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
            target = path + "?" + query if query else path
            # A GET has no body: its request target is what carries the data.
            return PreparedRequest(
                "GET",
                URL(self._base_url + target, encoded=True),
                self._base_path + path,
                tuple(params),
                headers,
                None,
                (self._base_path + target).encode("ascii"),
            )
        # Compact UTF-8, nothing escaped beyond what JSON requires (orjson: several times
        # cheaper than the standard library's encoder, the same bytes but for the exponent of
        # small floats: 1e-7 where json writes 1e-07).
        body = orjson.dumps(payload)
        headers["Content-Type"] = "application/json"
        if plan.placeholders:
            url, full_path = URL(self._base_url + path, encoded=True), self._base_path + path
        else:
            url, full_path = plan.url, plan.full_path
        return PreparedRequest(plan.method, url, full_path, (), headers, body, body)

    async def call(self, call: Call) -> Reply:
        prepared = self.prepare(call)
        with map_aiohttp_errors(self._system):
            if self._auth_applies:
                await self._auth.apply(prepared, refresh=False)
            answer = await self._send(prepared, refreshable=self._auth.refreshable)
            if answer is None:
                # An expired or revoked token: the system refused without processing.
                await self._auth.apply(prepared, refresh=True)
                answer = await self._send(prepared, refreshable=False)
                assert answer is not None  # without refreshable, a 401 raises
            status, kind, raw = answer
            data = self._parse(status, kind, raw)
        return Reply(
            data=data,
            status=status,
            request_digest=digest(prepared.digest_bytes),
            response_digest=digest(raw),
        )

    async def _send(self, prepared: PreparedRequest, *, refreshable: bool) -> _Answer | None:
        """One exchange; None for a 401 that a fresh token may cure."""
        lean = self._lean
        if lean is not None:
            response = await lean.fetch_call(
                prepared.method, prepared.url, prepared.headers, prepared.body
            )
            if isinstance(response, LeanAnswer):  # read whole, its connection released
                if refreshable and response.status == 401:
                    return None
                check_status(response)
                raw = whole_body(response, self._limit, self._system)
                return response.status, media_type(response.headers), raw
            try:
                if refreshable and response.status == 401:
                    return None
                check_status(response)
                raw = await read_limited(response, self._limit, self._system)
                return response.status, media_type(response.headers), raw
            finally:  # what leaving ``async with session.request(...)`` does
                response.release()
                await response.wait_for_close()
        async with self._session.request(
            prepared.method,
            prepared.url,
            data=prepared.body,
            headers=prepared.headers,
            allow_redirects=False,
        ) as response:
            if refreshable and response.status == 401:
                return None
            check_status(response)
            raw = await read_limited(response, self._limit, self._system)
            return response.status, media_type(response.headers), raw

    @staticmethod
    def _parse(status: int, kind: str, raw: bytes) -> Any:
        if status == 204 or (status == 202 and not raw):
            return None
        if kind != "application/json" and not kind.endswith("+json"):
            raise UnexpectedContentType(kind)
        try:
            return orjson.loads(raw)  # UTF-8 RFC 8259 JSON: nearly every answer
        except orjson.JSONDecodeError:
            # What only the standard library reads (a byte-order mark, UTF-16, NaN, integers
            # beyond 64 bits) is read as before; what neither reads is a malformed answer.
            return json.loads(raw)

    async def aclose(self) -> None:
        await self._session.close()


class RestAdapterFactory:
    """Entry point ``rest``: validates a system's blocks and opens its adapter."""

    def check(self, spec: SystemSpec) -> None:
        parse_rest_config(spec)

    async def open(self, spec: SystemSpec) -> RestAdapter:
        config = parse_rest_config(spec)
        session = open_session(spec, headers={"Accept": "application/json"})
        return RestAdapter(spec, config, session)


build_rest_adapter = RestAdapterFactory()
