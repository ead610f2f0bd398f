"""Shared REST adapter: JSON over one httpx client per system on aiohttp's engine.

``map_httpx_errors`` is the only place where httpx and aiohttp exceptions become ours:

    foreign exception                             ours                     reached_backend
    HTTP 429 (refused before any processing)      BackendRateLimited       False
    HTTP 5xx (503 may carry Retry-After)          BackendServerError       True
    HTTP 4xx (after one token refresh on 401)     BackendRejected          True
    HTTP 1xx / 3xx                                BackendBadResponse       True
    connect timeout                               BackendTimeout           False
    connection refused, DNS failure               BackendUnavailable       False
    read timeout (also between trickled bytes)    BackendTimeout           True
    disconnect, reset, protocol error mid-answer  BackendUnavailable       True
    malformed JSON, wrong content type            BackendBadResponse       True

Bodies are streamed against ``max_response_bytes``; nothing here logs payloads or secrets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import quote, quote_plus

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

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
)

__all__ = [
    "ConfigModel",
    "NoAuth",
    "RestAdapter",
    "RestAdapterFactory",
    "SecretValue",
    "UnexpectedContentType",
    "build_rest_adapter",
    "config_error",
    "context_headers",
    "error_for_status",
    "header_safe",
    "map_httpx_errors",
    "media_type",
    "open_http_client",
    "parse_auth",
    "parse_retry_after",
    "raise_for_status",
    "read_limited",
    "translate_httpx_error",
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


def config_error(prefix: str, exc: ValidationError) -> AdapterConfigError:
    """The first problem of a pydantic error as an AdapterConfigError; the input is never echoed."""
    first = exc.errors()[0]
    where = ".".join([prefix, *(str(p) for p in first["loc"])])
    return AdapterConfigError(where, first["msg"])


def parse_auth(block: Mapping[str, Any], models: Mapping[str, type[ConfigModel]]) -> ConfigModel:
    """The auth block validated by the model its ``type`` names (absent type = none)."""
    kind = block.get("type", "none")
    model = models.get(str(kind))
    if model is None:
        raise AdapterConfigError("auth.type", f"must be one of {sorted(models)}")
    try:
        return model.model_validate({"type": "none", **block})
    except ValidationError as exc:
        raise config_error("auth", exc) from None


def parse_rest_config(spec: SystemSpec) -> RestConfig:
    auth = parse_auth(spec.auth, _AUTH_MODELS)
    assert isinstance(auth, NoAuth | ApiKeyAuth | OAuth2ClientCredentials | HmacAuth)
    try:
        options = RestOptions.model_validate(dict(spec.options))
    except ValidationError as exc:
        raise config_error("options", exc) from None
    if not spec.operations:
        raise AdapterConfigError("operations", "a REST system needs at least one operation")
    operations: dict[str, RestOperation] = {}
    for name, block in spec.operations.items():
        try:
            operations[name] = RestOperation.model_validate(dict(block))
        except ValidationError as exc:
            raise config_error(f"operations.{name}", exc) from None
    return RestConfig(auth=auth, options=options, operations=operations)


# --- the one translation boundary -------------------------------------------------------------


class UnexpectedContentType(Exception):
    """The answer's media type is not what the protocol carries."""


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
    assert isinstance(exc, httpx.HTTPStatusError)
    retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
    return error_for_status(exc.response.status_code, retry_after, system)


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

# Most specific first; the first row whose type matches wins.
HTTPX_ERROR_TABLE: tuple[tuple[type[BaseException], _Build], ...] = (
    (httpx.HTTPStatusError, _from_status),
    (UnexpectedContentType, _as(BackendBadResponse, _MALFORMED, reached=True)),
    (json.JSONDecodeError, _as(BackendBadResponse, _MALFORMED, reached=True)),
    (UnicodeDecodeError, _as(BackendBadResponse, _MALFORMED, reached=True)),
    # aiohttp's own exceptions (the __cause__ of httpx_aiohttp's): that package maps both a refused
    # connection and a disconnect mid-answer to httpx.ConnectTimeout, which would misstate
    # whether the request reached the back-end.
    (aiohttp.ConnectionTimeoutError, _as(BackendTimeout, _CONNECT_SLOW, reached=False)),
    (aiohttp.ServerTimeoutError, _as(BackendTimeout, _READ_SLOW, reached=True)),
    (aiohttp.ClientConnectorError, _as(BackendUnavailable, _UNREACHABLE, reached=False)),
    (aiohttp.ServerDisconnectedError, _as(BackendUnavailable, _BROKEN, reached=True)),
    (aiohttp.ClientPayloadError, _as(BackendUnavailable, _BROKEN, reached=True)),
    (aiohttp.ClientResponseError, _as(BackendUnavailable, _BROKEN, reached=True)),
    (aiohttp.ClientConnectionError, _as(BackendUnavailable, _BROKEN, reached=True)),
    (httpx.ConnectTimeout, _as(BackendTimeout, _CONNECT_SLOW, reached=False)),
    (httpx.PoolTimeout, _as(BackendTimeout, _CONNECT_SLOW, reached=False)),
    (httpx.ConnectError, _as(BackendUnavailable, _UNREACHABLE, reached=False)),
    (httpx.TimeoutException, _as(BackendTimeout, _READ_SLOW, reached=True)),
    (httpx.TransportError, _as(BackendUnavailable, _BROKEN, reached=True)),
)


def translate_httpx_error(exc: BaseException, system: str) -> BackendError | None:
    """Our error for a foreign one, or None when the table has no row for it."""
    cause = exc.__cause__
    candidates: Iterable[BaseException] = (
        (cause, exc) if isinstance(exc, httpx.HTTPError) and cause is not None else (exc,)
    )
    for candidate in candidates:
        for foreign, build in HTTPX_ERROR_TABLE:
            if isinstance(candidate, foreign):
                return build(candidate, system)
    return None


@contextlib.contextmanager
def map_httpx_errors(system: str, *, request_sent: bool = True) -> Iterator[None]:
    """Translate httpx / aiohttp failures into BackendErrors with safe details.

    ``request_sent=False`` marks a preliminary exchange (a token request): whatever fails
    there, the call itself never reached the back-end.
    """
    try:
        yield
    except BackendError as exc:
        if not request_sent:
            exc.reached_backend = False
        raise
    except Exception as exc:
        error = translate_httpx_error(exc, system)
        if error is None:
            raise
        if not request_sent:
            error.reached_backend = False
        raise error from exc


# --- HTTP plumbing shared with the SOAP adapter -----------------------------------------------


def open_http_client(spec: SystemSpec, *, headers: Mapping[str, str]) -> httpx.AsyncClient:
    """The one client of a system: httpx API on aiohttp's engine (NOTES.md: httpx's own pool
    collapses under concurrency), no environment proxies, no redirects."""
    limits = httpx.Limits(
        max_connections=spec.concurrency_limit, max_keepalive_connections=spec.concurrency_limit
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False),
        timeout=httpx.Timeout(spec.read_timeout, connect=spec.connect_timeout),
        headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", **headers},
        follow_redirects=False,
        trust_env=False,
    )


async def raise_for_status(response: httpx.Response) -> None:
    """Raise HTTPStatusError for a non-2xx answer, closing it unread (its body is not ours)."""
    if not 200 <= response.status_code < 300:
        await response.aclose()
        raise httpx.HTTPStatusError(
            f"HTTP {response.status_code}", request=response.request, response=response
        )


async def read_limited(response: httpx.Response, limit: int, system: str) -> bytes:
    """The whole body, refusing it as soon as it grows past ``limit`` bytes."""
    too_large = BackendResponseTooLarge(
        f"The answer of system {system} exceeds {limit} bytes.", reached_backend=True
    )
    try:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)
    finally:
        await response.aclose()


def media_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
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
    ("Idempotency-Key", "idempotency_key"),
)
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
_HEADER_SAFE = "!#$&'()*+,/:;=?@[]^_`{|}~-."


def header_safe(value: str) -> str:
    """Visible ASCII passes unchanged; anything else (a Chinese purpose, say) is sent as
    percent-encoded UTF-8, because header values must be ASCII."""
    if _VISIBLE_ASCII.fullmatch(value):
        return value
    return quote(value, safe=_HEADER_SAFE)


def context_headers(context: CallContext) -> dict[str, str]:
    """The call context as headers; a field that is None is left out."""
    headers: dict[str, str] = {}
    for name, attribute in _CONTEXT_HEADERS:
        value = getattr(context, attribute)
        if value is not None:
            headers[name] = header_safe(str(value))
    return headers


# --- authentication ---------------------------------------------------------------------------


class Authenticator(Protocol):
    refreshable: bool

    async def apply(self, request: httpx.Request, *, refresh: bool) -> None: ...


class _NoAuthenticator:
    refreshable = False

    async def apply(self, request: httpx.Request, *, refresh: bool) -> None:
        return None


class _ApiKeyAuthenticator:
    refreshable = False

    def __init__(self, config: ApiKeyAuth) -> None:
        self._header = config.header
        self._key = config.key

    async def apply(self, request: httpx.Request, *, refresh: bool) -> None:
        request.headers[self._header] = self._key.reveal()


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Query pairs sorted and percent-encoded, as the HMAC string-to-sign wants them."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(pairs))


class _HmacAuthenticator:
    refreshable = False

    def __init__(self, config: HmacAuth) -> None:
        self._key_id = config.key_id
        self._secret = config.secret

    async def apply(self, request: httpx.Request, *, refresh: bool) -> None:
        date = email.utils.formatdate(usegmt=True)
        path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
        to_sign = "\n".join(
            (
                request.method,
                path,
                canonical_query(request.url.params.multi_items()),
                date,
                hashlib.sha256(request.content).hexdigest(),
            )
        )
        mac = hmac.new(self._secret.reveal().encode(), to_sign.encode(), hashlib.sha256)
        request.headers["X-Tb-Key"] = self._key_id
        request.headers["X-Tb-Date"] = date
        request.headers["X-Tb-Signature"] = base64.b64encode(mac.digest()).decode("ascii")


class _OAuth2Authenticator:
    """Client credentials grant (RFC 6749 §4.4), token cached until shortly before expiry.

    Written by hand: authlib's httpx integration warns on import (NOTES.md), and the grant is
    one form POST.
    """

    refreshable = True

    def __init__(
        self,
        config: OAuth2ClientCredentials,
        client: httpx.AsyncClient,
        spec: SystemSpec,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._client = client
        self._system = spec.id
        self._limit = spec.max_response_bytes
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def apply(self, request: httpx.Request, *, refresh: bool) -> None:
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
        request = self._client.build_request("POST", cfg.token_url, data=form, headers=headers)
        with map_httpx_errors(self._system, request_sent=False):
            response = await self._client.send(request, stream=True)
            await raise_for_status(response)
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


def _authenticator(config: RestAuth, client: httpx.AsyncClient, spec: SystemSpec) -> Authenticator:
    if isinstance(config, ApiKeyAuth):
        return _ApiKeyAuthenticator(config)
    if isinstance(config, HmacAuth):
        return _HmacAuthenticator(config)
    if isinstance(config, OAuth2ClientCredentials):
        return _OAuth2Authenticator(config, client, spec)
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


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """What goes over the wire, and the bytes its digest is taken of."""

    request: httpx.Request
    digest_bytes: bytes


class RestAdapter:
    """One REST system: ``call`` fills the operation's path, sends JSON, returns parsed JSON."""

    def __init__(self, spec: SystemSpec, config: RestConfig, client: httpx.AsyncClient) -> None:
        self._spec = spec
        self._system = spec.id
        self._config = config
        self._client = client
        self._auth = _authenticator(config.auth, client, spec)
        self._base_url = spec.address.rstrip("/")

    def prepare(self, call: Call) -> PreparedRequest:
        operation = self._config.operations.get(call.operation)
        if operation is None:
            raise _refuse(f"System {self._system} has no operation {call.operation!r}.")
        payload = dict(call.payload)
        values: dict[str, str] = {}
        for name in operation.placeholders:
            text = _scalar_text(payload.pop(name, None))
            if text is None:
                raise _refuse(f"Operation {call.operation!r} needs a plain value for {name!r}.")
            values[name] = quote(text, safe="")
        path = _PLACEHOLDER.sub(lambda m: values[m[1]], operation.path)
        headers = {**self._config.options.headers, **context_headers(call.context)}
        url = self._base_url + path
        if operation.method == "GET":
            params: list[tuple[str, str | int | float | bool | None]] = []
            for key, value in payload.items():
                if value is None:
                    continue
                text = _scalar_text(value)
                if text is None:
                    raise _refuse(f"Operation {call.operation!r} takes only plain query values.")
                params.append((key, text))
            request = self._client.build_request("GET", url, params=params, headers=headers)
            # A GET has no body: its request target is what carries the data.
            return PreparedRequest(request, request.url.raw_path)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers["Content-Type"] = "application/json"
        request = self._client.build_request(operation.method, url, content=body, headers=headers)
        return PreparedRequest(request, body)

    async def call(self, call: Call) -> Reply:
        prepared = self.prepare(call)
        request = prepared.request
        with map_httpx_errors(self._system):
            await self._auth.apply(request, refresh=False)
            response = await self._client.send(request, stream=True)
            if response.status_code == 401 and self._auth.refreshable:
                # An expired or revoked token: the system refused without processing.
                await response.aclose()
                await self._auth.apply(request, refresh=True)
                response = await self._client.send(request, stream=True)
            await raise_for_status(response)
            raw = await read_limited(response, self._spec.max_response_bytes, self._system)
            data = self._parse(response, raw)
        return Reply(
            data=data,
            status=response.status_code,
            request_digest=digest(prepared.digest_bytes),
            response_digest=digest(raw),
        )

    @staticmethod
    def _parse(response: httpx.Response, raw: bytes) -> Any:
        if response.status_code == 204 or (response.status_code == 202 and not raw):
            return None
        kind = media_type(response)
        if kind != "application/json" and not kind.endswith("+json"):
            raise UnexpectedContentType(kind)
        return json.loads(raw)

    async def aclose(self) -> None:
        await self._client.aclose()


class RestAdapterFactory:
    """Entry point ``rest``: validates a system's blocks and opens its adapter."""

    def check(self, spec: SystemSpec) -> None:
        parse_rest_config(spec)

    async def open(self, spec: SystemSpec) -> RestAdapter:
        config = parse_rest_config(spec)
        client = open_http_client(spec, headers={"Accept": "application/json"})
        return RestAdapter(spec, config, client)


build_rest_adapter = RestAdapterFactory()
