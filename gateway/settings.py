"""Configuration models and the loader: the only place the gateway reads configuration.

A configuration directory holds ``gateway.yaml`` (server, logging, stores), ``systems.yaml``
(provincial back-ends), ``services/*.yaml`` (one catalogue item each) and ``routes.yaml`` (the
point-to-point agreements). Everything is validated once, at start-up or by
``tongban config check``; every problem names the file, the entry and the field. Secrets are
written as ``{env: NAME}`` or ``{file: PATH}``, never inline, and are never echoed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.adapter import (
    AdapterConfigError,
    ContractedFactory,
    Secret,
    SystemContract,
    SystemSpec,
    load_adapter_factory,
)
from gateway.cases.config import (
    CaseOperation,
    CaseSettings,
    LinkedCase,
    case_reference_problems,
)
from gateway.cases.linked import linked_problems
from gateway.config_problems import schema_problems, suggestion, validation_problems
from gateway.consent.config import ConsentSettings
from gateway.identity.clients import TOKEN_EXCHANGE, ClientRegistration
from gateway.identity.config import ProviderSettings
from gateway.identity.legacy_face import LegacyAppSettings
from gateway.identity.ticket_contract import idp_contract_problems
from gateway.identity.upstream_kinds import AnyIdpSettings, IdpEntry
from gateway.licences.config import (
    IssuerSettings,
    LicenceCatalogue,
    LicenceType,
    LicenceUse,
    licence_problems,
    licence_use_problems,
)
from gateway.mapping import (
    FieldMapping,
    MappingError,
    compile_mapping,
    passthrough_problems,
    request_problems,
    response_problems,
)
from gateway.principal import levels_from_minimum
from gateway.ratelimit.config import RateLimitSettings
from gateway.secrets import SecretRef, collecting_unset, is_secret_ref, read_secret_ref
from gateway.subject_config import SubjectDeclaration, declaration_problems

# GB/T 2260 province-level codes (two digits) the gateway accepts.
PROVINCES: Mapping[str, tuple[str, str]] = {
    "11": ("北京", "Beijing"),
    "12": ("天津", "Tianjin"),
    "13": ("河北", "Hebei"),
    "14": ("山西", "Shanxi"),
    "15": ("内蒙古", "Inner Mongolia"),
    "21": ("辽宁", "Liaoning"),
    "22": ("吉林", "Jilin"),
    "23": ("黑龙江", "Heilongjiang"),
    "31": ("上海", "Shanghai"),
    "32": ("江苏", "Jiangsu"),
    "33": ("浙江", "Zhejiang"),
    "34": ("安徽", "Anhui"),
    "35": ("福建", "Fujian"),
    "36": ("江西", "Jiangxi"),
    "37": ("山东", "Shandong"),
    "41": ("河南", "Henan"),
    "42": ("湖北", "Hubei"),
    "43": ("湖南", "Hunan"),
    "44": ("广东", "Guangdong"),
    "45": ("广西", "Guangxi"),
    "46": ("海南", "Hainan"),
    "50": ("重庆", "Chongqing"),
    "51": ("四川", "Sichuan"),
    "52": ("贵州", "Guizhou"),
    "53": ("云南", "Yunnan"),
    "54": ("西藏", "Tibet"),
    "61": ("陕西", "Shaanxi"),
    "62": ("甘肃", "Gansu"),
    "63": ("青海", "Qinghai"),
    "64": ("宁夏", "Ningxia"),
    "65": ("新疆", "Xinjiang"),
}

LEVELS = ("L1", "L2", "L3", "LP", "Counter")
Level = Literal["L1", "L2", "L3", "LP", "Counter"]
Mode = Literal["online", "proxy", "joint", "window", "query"]
RetryPolicy = Literal["safe", "idempotent-with-key", "never"]
_M = TypeVar("_M", bound=BaseModel)
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ConfigError(Exception):
    """The configuration is wrong; ``problems`` lists each one as 'file: entry: field: message'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def report(self, config_dir: Path) -> str:
        """What ``config check`` and ``serve`` print: a count, then one problem a line."""
        head = f"configuration {config_dir}: {len(self.problems)} problem(s)"
        return "\n".join([head, *(f"  {problem}" for problem in self.problems)])


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _province(value: str) -> str:
    if value not in PROVINCES:
        raise ValueError(f"{value!r} is not a GB/T 2260 province code")
    return value


class Localized(_Model):
    """A name in Chinese and English."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


# --- gateway.yaml -----------------------------------------------------------------------------


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    """Address the HTTP server binds to."""
    port: int = Field(8080, ge=0, le=65535)
    """TCP port; 0 picks a free one."""
    public_url: str | None = None
    """The URL portals use to reach the gateway, when it differs from host:port."""
    max_body_bytes: int = Field(1 << 20, ge=1024)
    """Requests with a larger body are refused with client.payload_too_large."""
    idle_timeout: float = Field(15.0, gt=0, le=3600)
    """Seconds a connection may go without a complete request head before it is closed: an
    idle keep-alive connection and one sending its headers slowly alike (the header timeout)."""
    body_timeout: float = Field(30.0, gt=0, le=3600)
    """Seconds a request's whole body may take to arrive; slower is 408 client.request_timeout
    and the connection closes."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "asyncio"
    """The event loop of each server process: asyncio's own (the default); ``uvloop``, which
    fails start-up when it is not installed; ``auto``, uvloop when installed, else asyncio's.
    uvloop measured 7-12 % less CPU per routed call with the worker saturated and no gain at a
    moderate fixed rate (docs/performance.md)."""


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    format: Literal["json", "console"] = "json"
    """JSON lines for machines (serve), readable lines for people (demo)."""


class AdmissionSettings(_Model):
    """How much one worker process takes in at once; beyond it a request is refused at once
    with 503 gateway.overloaded and Retry-After, before any other work is done for it."""

    max_in_flight: int = Field(128, ge=1)
    """Requests one worker handles at the same time (health and metrics not counted): the
    ceiling; the bound in force is lower while the worker's event loop runs late."""
    min_in_flight: int = Field(8, ge=1)
    """The bound in force never falls below this (nor above max_in_flight). Under overload
    the bound sits here or near it: lower, admitted calls wait less and fewer are admitted;
    higher, a worker whose calls wait on a slow back-end keeps more of them going."""
    queue_delay_target_ms: float = Field(50.0, ge=0, le=1000)
    """Mean delay of the worker's event loop (how long ready work waits to run) above which
    the bound on requests in flight is lowered; 0: the bound stays at max_in_flight."""
    refusing_delay_target_ms: float = Field(1.0, ge=0, le=1000)
    """The target while the worker refuses requests (it refused more than it admitted in the
    last interval): demand is then at least twice what it takes in, and every ms of delay is
    waited by admitted calls at each of their awaits; the lower of the two targets applies.
    0: none (the worker keeps queue_delay_target_ms while refusing)."""
    queue_delay_interval_ms: float = Field(100.0, ge=10, le=10_000)
    """Over how long that delay is averaged before the bound is adapted."""
    max_body_bytes_in_flight: int = Field(32 << 20, ge=1024)
    """Request body bytes one worker holds at the same time: a request counts its
    Content-Length, or server.max_body_bytes when it streams a body of unknown length."""
    retry_after: int = Field(1, ge=1, le=3600)
    """Seconds a refused caller is told to wait (Retry-After)."""
    max_connections: int = Field(1024, ge=1)
    """Open connections one worker holds; a connection accepted beyond it is answered once, a
    503 with Connection: close, and closed (what waits in front of the bound on requests is
    bounded too)."""


class AuditSettings(_Model):
    store: Literal["sqlite", "postgres"] = "sqlite"
    """sqlite: a file in data_dir (one instance); postgres: shared by several instances, each
    writing its own chain."""
    dsn: SecretRef | None = None
    """PostgreSQL connection string (it may hold a password, so it is a secret reference)."""
    schema_name: str = Field("public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema holding the audit tables."""
    algorithm: Literal["sha256", "sm3"] = "sha256"
    """Hash of the chain: SHA-256, or SM3 (GB/T 32905)."""
    batch_size: int = Field(1000, ge=1)
    """Most records per group commit."""
    linger_ms: float = Field(1.0, ge=0)
    """How long a batch waits for company once its first record is queued, while required
    records come closer together than this; further apart, a record is committed at once."""
    buffered_linger_ms: float = Field(20.0, ge=0)
    """How long a batch of records nobody waits for (buffered services, identity events)
    gathers company before its commit; a call or answer that waits for a commit ends it."""
    buffer_limit: int = Field(50_000, ge=100)
    """Records queued at most; buffered services fail closed beyond it."""
    checkpoint_every: int = Field(10_000, ge=1)
    """Sign the chain head after this many records..."""
    checkpoint_interval: float = Field(30.0, gt=0)
    """...or this many seconds, whichever comes first."""

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> AuditSettings:
        if self.store == "postgres" and self.dsn is None:
            raise ValueError("a postgres audit store needs a 'dsn'")
        return self


class GatewaySettings(_Model):
    server: ServerSettings = ServerSettings()
    """The HTTP listener."""
    instance_id: str = Field("gw-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    """This instance's name; it is also the id of its audit chain, so keep it stable."""
    audit: AuditSettings = AuditSettings()
    """The tamper-evident audit trail."""
    identity: ProviderSettings | None = None
    """The OpenID Connect provider (issuer, pairwise secret, algorithms, lifetimes); portals
    and clients are declared in clients.yaml."""
    logging: LoggingSettings = LoggingSettings()
    """Operations log output."""
    data_dir: Path = Path("data")
    """Where embedded stores keep their files (relative to the configuration directory)."""
    cases: CaseSettings = CaseSettings()
    """Cross-province cases: store, delivery schedule, callback keys, event sink."""
    rate_limits: RateLimitSettings = RateLimitSettings()
    """Rate limits of /api/* per OAuth client and per person, and where they are counted."""
    admission: AdmissionSettings = AdmissionSettings()
    """Per-worker bound on requests and body bytes in flight (overload is refused, not queued)."""
    consent: ConsentSettings = ConsentSettings()
    """Consent grants and delegations (授权用证、委托用证): where the book keeps them."""

    @model_validator(mode="after")
    def _rate_limit_store(self) -> GatewaySettings:
        limits = self.rate_limits
        if limits.store != "redis":
            return self
        if limits.redis_url is None and self.identity is None:
            raise ValueError(
                "rate_limits: a redis store needs redis_url (there is no identity.session"
                ".redis_url to share)"
            )
        if self.identity is not None:
            taken = {
                "identity.session.redis_prefix": self.identity.session.redis_prefix,
                "identity.token_redis_prefix": self.identity.token_redis_prefix,
            }
            for name, prefix in taken.items():
                if prefix.startswith(limits.redis_prefix) or limits.redis_prefix.startswith(prefix):
                    raise ValueError(f"rate_limits: redis_prefix overlaps {name} ({prefix!r})")
        return self

    @property
    def rate_limit_redis_url(self) -> str | None:
        """Where a 'redis' rate-limit store lives: its own URL, else the SSO sessions' Redis."""
        if self.rate_limits.redis_url is not None:
            return self.rate_limits.redis_url
        return self.identity.session.redis_url if self.identity is not None else None


# --- systems.yaml -----------------------------------------------------------------------------


class Timeouts(_Model):
    connect: float = Field(2.0, gt=0)
    """Seconds to open a connection."""
    read: float = Field(10.0, gt=0)
    """Seconds between bytes of the answer (a rule of its own only when shorter than
    ``attempt``: otherwise the attempt's cap always comes first)."""
    attempt: float = Field(10.0, gt=0)
    """Hard cap on one attempt, end to end."""
    deadline: float = Field(30.0, gt=0)
    """No new attempt starts after this many seconds from the first."""


class BreakerSettings(_Model):
    failure_threshold: int = Field(5, ge=1)
    """Consecutive failures that open the breaker."""
    reset_timeout: float = Field(30.0, gt=0)
    """Seconds the breaker stays open before letting a probe through."""
    half_open_max_calls: int = Field(1, ge=1)
    """Probes allowed at once while half-open."""


class RetrySettings(_Model):
    max_attempts: int = Field(3, ge=1, le=10)
    """Attempt cap, the first attempt included."""
    initial_backoff: float = Field(0.2, ge=0)
    """First wait, doubled each time."""
    max_backoff: float = Field(5.0, ge=0)
    """Longest wait between two attempts."""
    jitter: float = Field(0.2, ge=0)
    """Random extra wait, up to this many seconds."""
    max_retry_after: float = Field(30.0, ge=0)
    """A back-end's Retry-After above this is not waited for: the call fails at once."""


def _resolve_secret(value: Any, *, resolve: bool) -> Secret:
    """Turn ``{env: NAME}`` / ``{file: PATH}`` into an adapter Secret; refuse inline secrets."""
    if isinstance(value, Secret):
        return value
    return Secret(read_secret_ref(value, resolve=resolve))


_SECRET_KEYS = frozenset({"password", "secret", "client_secret", "key", "api_key", "token"})


def _resolve_secrets(block: Mapping[str, Any], *, resolve: bool) -> dict[str, Any]:
    """Resolve every secret reference of an auth block, at any depth (a SOAP header's password
    field, say); a secret-named field must be one. Other values pass through."""
    out: dict[str, Any] = {}
    for name, value in block.items():
        if name in _SECRET_KEYS or is_secret_ref(value):
            try:
                out[name] = _resolve_secret(value, resolve=resolve)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        elif isinstance(value, Mapping):
            try:
                out[name] = _resolve_secrets(value, resolve=resolve)
            except ValueError as exc:
                raise ValueError(f"{name}.{exc}") from None
        else:
            out[name] = value
    return out


class SystemSettings(_Model):
    name: Localized
    """Display name of the provincial system."""
    province: str
    """GB/T 2260 code of the province that runs it."""
    protocol: Literal["soap", "rest"]
    """What it speaks."""
    adapter: str | None = None
    """Adapter plugin name; defaults to the protocol's shared adapter."""
    address: str = Field(pattern=r"^https?://")
    """Base URL (REST) or endpoint address (SOAP) for this province's deployment."""
    wsdl: str | None = None
    """Vendored WSDL file, relative to the configuration directory (SOAP only)."""
    auth: dict[str, Any] = Field(default_factory=lambda: {"type": "none"})
    """How the gateway authenticates to the system; checked by the adapter."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Adapter-specific options; checked by the adapter."""
    operations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Operations the system offers, each with adapter-specific details."""
    timeouts: Timeouts = Timeouts()
    """Connect, read, per-attempt and overall deadlines."""
    concurrency_limit: int = Field(32, ge=1)
    """Calls in flight at once to this system."""
    queue_timeout: float = Field(1.0, ge=0)
    """Seconds a call waits for a free slot before gateway.system_busy."""
    breaker: BreakerSettings = BreakerSettings()
    """Circuit breaker thresholds."""
    retry: RetrySettings = RetrySettings()
    """Backoff schedule for operations whose policy allows retries."""
    max_response_bytes: int = Field(1 << 20, ge=1024)
    """Answers larger than this are refused with backend.response_too_large."""

    _province_ok = field_validator("province")(_province)

    @model_validator(mode="after")
    def _soap_needs_wsdl(self) -> SystemSettings:
        if self.protocol == "soap" and not self.wsdl:
            raise ValueError("a SOAP system needs a vendored 'wsdl' file")
        return self

    @property
    def adapter_name(self) -> str:
        return self.adapter or self.protocol

    def spec(self, system_id: str, config_dir: Path, *, resolve_secrets: bool = True) -> SystemSpec:
        return SystemSpec(
            id=system_id,
            province=self.province,
            address=self.address,
            config_dir=config_dir,
            connect_timeout=self.timeouts.connect,
            read_timeout=self.timeouts.read,
            attempt_timeout=self.timeouts.attempt,
            max_response_bytes=self.max_response_bytes,
            concurrency_limit=self.concurrency_limit,
            wsdl=self.wsdl,
            auth=_resolve_secrets(self.auth, resolve=resolve_secrets),
            options=self.options,
            operations=self.operations,
        )


# --- services/*.yaml --------------------------------------------------------------------------


class Material(_Model):
    code: str
    """Stable material code."""
    name: Localized
    """What the applicant must supply."""
    required: bool = True
    """Whether the application is incomplete without it."""
    source: Literal["e-licence", "upload", "original", "shared-data"] = "upload"
    """Where it comes from: an electronic licence, an upload, the original at a window, or data
    pulled from another system (免证办)."""
    licence: LicenceUse | None = None
    """免证办: the applicant names the licence (type, number if several) and the gateway finds
    it for the case's data subject and verifies it at its issuer (licences.yaml)."""

    @model_validator(mode="after")
    def _licence_is_e_licence(self) -> Material:
        if self.licence is not None and self.source != "e-licence":
            raise ValueError("a material found as a licence has source: e-licence")
        return self


class ResultField(_Model):
    """How people read one field of an operation's answer (portals, window consoles)."""

    zh: str = Field(min_length=1)
    en: str | None = None
    values: dict[str, str] = Field(default_factory=dict)
    """Words for coded values (``"02": 封存``; booleans as ``"true"`` / ``"false"``)."""


class Operation(_Model):
    name: Localized
    """What the operation does."""
    kind: Literal["query", "verify", "submit"]
    """Queries and verifications are read-only; submissions change the back-end's state."""
    retry: RetryPolicy
    """safe: retry freely; idempotent-with-key: retry with the same idempotency key forwarded;
    never: no retry once the request may have reached the back-end."""
    input_schema: dict[str, Any]
    """JSON Schema (2020-12) of the call's ``data``."""
    case: CaseOperation | None = None
    """For submissions taken as cases: how answers move a case on, and the status queries
    used to poll it and to reconcile an unknown outcome."""
    subject: SubjectDeclaration | None = None
    """Whose data this is (gateway/subjects.py): ``caller``, ``public``, or the input fields
    naming the person(s) or enterprise(s); the service's ``subject`` when absent."""
    levels: tuple[Level, ...] | None = None
    """Identity levels admitted to this operation (``[L1, L2, L3, LP]``); the service's when
    absent."""
    result_fields: dict[str, ResultField] = Field(default_factory=dict)
    """Labels of the answer's fields, by dotted path (``certificate.number``; a list's items
    under the list's path: ``contributions.year``). Display only: published in the service
    guide, never used to route, map or check anything."""

    @field_validator("input_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = schema_problems(value)
        if problems:
            raise ValueError("\n".join(f"not a valid JSON Schema {p}" for p in problems))
        return value


class ServiceSettings(_Model):
    name: Localized
    """Catalogue name."""
    description: Localized | None = None
    """A sentence for the guide."""
    modes: list[Mode] = Field(min_length=1)
    """Handling modes: online 全程网办, proxy 异地代收代办, joint 多地联办, window, query."""
    min_level: Level | None = None
    """Lowest identity level allowed to call it (the ladder above it); or give ``levels``."""
    levels: tuple[Level, ...] | None = None
    """Identity levels admitted, as a set: public data for L1–L3 and LP alike is
    ``[L1, L2, L3, LP]``; an operation's own ``levels`` win."""
    subject: SubjectDeclaration | None = None
    """Whose data the operations are about, for those that do not declare their own."""
    consent_required: bool = False
    """Calls must name the holder's authorisation (授权用证)."""
    time_limit_days: int | None = Field(None, ge=1)
    """Promised handling time (承诺时限) in working days."""
    materials: list[Material] = Field(default_factory=list)
    """What an application needs."""
    operations: dict[str, Operation] = Field(min_length=1)
    """What portals can do with this service."""
    audit: Literal["required", "buffered"] = "required"
    """required: no audit record, no call (the request record is durably committed before the
    back-end is called); buffered: read-only calls may proceed while the audit store is down,
    their records kept in a bounded local buffer, and no call waits for a commit."""
    audit_outcome: Literal["buffered", "durable"] = "buffered"
    """When the outcome record of a call is written: 'buffered' (default), queued for the next
    group commit while the answer goes out; 'durable', the answer waits until it is committed
    too (a second commit in the call's path; only with audit: required)."""
    linked: LinkedCase | None = None
    """一件事 (联动办理): the parts every case of this service is made of, their dependencies
    and the data passed between them; absent: a case is one operation in one or several
    provinces, as the application names them."""

    @model_validator(mode="after")
    def _durable_outcome_needs_required_audit(self) -> ServiceSettings:
        if self.audit_outcome == "durable" and self.audit != "required":
            raise ValueError("audit_outcome: durable needs audit: required")
        return self

    @model_validator(mode="after")
    def _case_blocks_name_operations(self) -> ServiceSettings:
        problems = case_reference_problems(self.operations)
        if self.min_level is None and self.levels is None:
            problems.append("min_level: required, missing (or give levels)")
        if self.min_level is not None and self.levels is not None:
            problems.append("levels: give min_level or levels, not both")
        if self.linked is not None:
            try:
                Draft202012Validator.check_schema(self.linked.input_schema)
            except SchemaError as exc:
                problems.append(f"linked.input_schema: not a valid JSON Schema: {exc.message}")
            for part in self.linked.parts.values():
                if part.handling is not None and part.handling not in PROVINCES:
                    problems.append(f"linked: {part.handling!r} is not a GB/T 2260 province code")
            problems += linked_problems(self.linked, self.operations)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def levels_for(self, operation: str | None) -> frozenset[str]:
        """The levels admitted to ``operation`` (None: the service, for a case)."""
        op = self.operations.get(operation) if operation is not None else None
        if op is not None and op.levels is not None:
            return frozenset(op.levels)
        if self.levels is not None:
            return frozenset(self.levels)
        assert self.min_level is not None
        return levels_from_minimum(self.min_level)

    def level_requirement(self, operation: str | None) -> str:
        """How a refusal names the levels of ``operation``: the minimum, or the set."""
        op = self.operations.get(operation) if operation is not None else None
        if op is not None and op.levels is not None:
            return ", ".join(op.levels)
        if self.levels is not None:
            return ", ".join(self.levels)
        assert self.min_level is not None
        return self.min_level

    def subject_of(self, operation: str) -> SubjectDeclaration | None:
        """The declared data subject of ``operation``: its own, else the service's."""
        op = self.operations[operation]
        return op.subject if op.subject is not None else self.subject

    @property
    def case_subject(self) -> SubjectDeclaration | None:
        """A linked service's application subject (``linked.subject``)."""
        return self.linked.subject if self.linked is not None else None


def subject_problems(service: ServiceSettings) -> list[str]:
    """Each operation (and a linked application) declares its data subject, and a ``public``
    or ``caller`` one names no one by an ID number or credit code (gateway/subjects.py)."""
    problems: list[str] = []
    for name, operation in service.operations.items():
        for problem in declaration_problems(service.subject_of(name), operation.input_schema):
            problems.append(f"operations.{name}.{problem}")
    if service.linked is not None:
        for problem in declaration_problems(service.linked.subject, service.linked.input_schema):
            problems.append(f"linked.{problem}")
    return problems


# --- routes.yaml ------------------------------------------------------------------------------


class RouteSettings(_Model):
    service: str
    """Catalogue code."""
    operation: str
    """Operation of the service."""
    receiving: list[str] | Literal["*"] = "*"
    """Provinces whose portals and windows may make this call (收件地), or '*'."""
    handling: str
    """Province whose system handles it (办理地)."""
    system: str
    """System id from systems.yaml; it must be in the handling province."""
    system_operation: str
    """The system's own operation name."""
    request: dict[str, Any] | None = None
    """Mapping from the canonical call data to the system's payload; absent = unchanged."""
    response: dict[str, Any] | None = None
    """Mapping from the system's answer to the canonical answer; absent = unchanged."""
    licence_data: bool = False
    """The agreement lets a licence's data travel with a case on this route (免证办 with
    ``with_data``), not only its reference and verification (docs/licences.md)."""

    _handling_ok = field_validator("handling")(_province)

    @field_validator("receiving")
    @classmethod
    def _receiving_ok(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            for code in value:
                _province(code)
        return value


# --- status-queries.yaml ----------------------------------------------------------------------


class StatusAnswer(_Model):
    """How one system answers a shared status query: its operation and the two mappings, as in
    a route."""

    system_operation: str
    """The system's own operation name."""
    request: dict[str, Any] | None = None
    """Mapping from the query's canonical data to the system's payload; absent = unchanged."""
    response: dict[str, Any] | None = None
    """Mapping from the system's answer to the canonical answer; absent = unchanged."""


class StatusQuery(_Model):
    """A status query declared once (status-queries.yaml) and shared by every service whose
    cases name it (``case.poll_with`` / ``reconcile_with``) and by every system that answers it.

    A service naming it gains it as an operation; each route of that service to a system in
    ``answered_by`` gains a route for it, with the same receiving and handling provinces."""

    operation: dict[str, Any]
    """The operation as a service declares one (name, kind: query, retry, input_schema, ...)."""
    answered_by: dict[str, StatusAnswer] = Field(min_length=1)
    """System id → how that system answers it."""


# --- the whole ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything the gateway was configured with, validated and cross-checked."""

    config_dir: Path
    gateway: GatewaySettings
    systems: Mapping[str, SystemSettings]
    services: Mapping[str, ServiceSettings]
    routes: tuple[RouteSettings, ...]
    clients: Mapping[str, ClientRegistration] = field(default_factory=dict)
    idps: Mapping[str, AnyIdpSettings] = field(default_factory=dict)
    """Provincial identity platforms (idps.yaml) the gateway federates login to."""
    legacy_apps: Mapping[str, LegacyAppSettings] = field(default_factory=dict)
    """Legacy business systems at the ticket and CAS faces (legacy-apps.yaml)."""
    status_queries: Mapping[str, StatusQuery] = field(default_factory=dict)
    """Shared status queries (status-queries.yaml); their operations and routes are already in
    ``services`` and ``routes``."""
    licences: LicenceCatalogue = field(default_factory=LicenceCatalogue)
    """Electronic licence types, their issuers and seal keys (licences.yaml)."""

    def data_dir(self) -> Path:
        return (self.config_dir / self.gateway.data_dir).resolve()


def with_instance_id(settings: Settings, instance_id: str) -> Settings:
    """The settings with another instance id (``serve --instance-id``), validated like the file."""
    try:
        gateway = GatewaySettings.model_validate(
            {**settings.gateway.model_dump(by_alias=True), "instance_id": instance_id}
        )
    except ValidationError as exc:
        raise ConfigError(
            [f"--instance-id: {err['msg']}" for err in exc.errors() if "instance_id" in err["loc"]]
            or ["--instance-id: not valid"]
        ) from None
    return dataclasses.replace(settings, gateway=gateway)


_UNREADABLE: Any = object()
"""A file already reported as unreadable or not YAML: nothing more is said about it."""


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(entry)"


YAML_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""PyYAML's safe loader on libyaml when the wheel has it (about ten times faster at reading the
configuration, which every start, reload and `config check` does), else the pure-Python one."""


def read_yaml_text(text: str) -> Any:
    """YAML text as data, with the safe loader only."""
    return yaml.load(text, Loader=YAML_LOADER)  # noqa: S506 - a safe loader


def _read_yaml(path: Path, problems: list[str], *, name: str | None = None) -> Any:
    """The file's data, or ``_UNREADABLE`` after reporting why (once: no second message)."""
    fname = name or path.name
    try:
        return read_yaml_text(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{fname}: cannot be read ({exc.strerror})")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None)
        problems.append(f"{fname}: not valid YAML{where}" + (f": {what}" if what else ""))
    return _UNREADABLE


def _report(model: Any, exc: ValidationError, where: str, problems: list[str]) -> None:
    for location, message in validation_problems(model, exc):
        for line in message.splitlines():
            problems.append(f"{where}: {location}: {line}")


def _validate(
    model: type[_M], data: Any, where: str, problems: list[str], *, resolve: bool = True
) -> _M | None:
    try:
        return model.model_validate(data, context={"resolve_secrets": resolve})
    except ValidationError as exc:
        _report(model, exc, where, problems)
    return None


def _entries(data: Any, key: str, fname: str, problems: list[str]) -> dict[str, Any]:
    if data is None or data is _UNREADABLE:
        return {}
    if isinstance(data, dict) and set(data) == {key} and isinstance(data[key], dict):
        entries: dict[str, Any] = data[key]
        return entries
    if isinstance(data, dict) and len(data) == 1 and key not in data:
        (other,) = data
        problems.append(f"{fname}: {other}: unknown key{suggestion(str(other), [key])}")
    else:
        problems.append(f"{fname}: expected a single top-level mapping '{key}:'")
    return {}


@dataclass(slots=True)
class _Loading:
    """What one run of the loader has seen so far."""

    config_dir: Path
    resolve: bool
    check_contracts: bool
    problems: list[str] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)
    """Services and systems that failed validation: what is known of them is in ``raw_*``."""
    raw_service_ops: dict[str, set[str]] = field(default_factory=dict)
    raw_systems: dict[str, dict[str, Any]] = field(default_factory=dict)
    contracts: dict[str, SystemContract] = field(default_factory=dict)
    systems_unreadable: bool = False
    """systems.yaml could not be read: routes are not told their systems are missing."""
    routes_unreadable: bool = False
    """routes.yaml could not be read: nothing is said about routes missing from it."""
    placed: list[tuple[RouteSettings, str]] = field(default_factory=list)
    """Each route of routes.yaml with the words that locate it in a problem."""


def load_settings(
    config_dir: Path, *, resolve_secrets: bool = True, check_contracts: bool = True
) -> Settings:
    """Read, validate and cross-check a configuration directory, or raise ConfigError.

    Every file and every entry is checked, and every problem reported, in one run. A secret
    reference that cannot be read is named in one line at the top, and everything else is still
    checked. ``check_contracts`` loads each SOAP system's WSDL (blocking file and CPU work) and
    checks the system and its routes' mappings against it."""
    config_dir = config_dir.resolve()
    if not config_dir.is_dir():
        raise ConfigError([f"{config_dir}: not a directory"])
    state = _Loading(config_dir, resolve_secrets, check_contracts)
    with collecting_unset() as unset:
        settings = _load(state)
    problems = state.problems
    if unset:
        problems.insert(0, unset.summary())
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _load(state: _Loading) -> Settings | None:
    config_dir, problems = state.config_dir, state.problems
    gateway_file = config_dir / "gateway.yaml"
    gw_data = _read_yaml(gateway_file, problems) if gateway_file.exists() else {}
    gateway = (
        None
        if gw_data is _UNREADABLE
        else _validate(
            GatewaySettings, gw_data or {}, "gateway.yaml", problems, resolve=state.resolve
        )
    )
    systems = _load_systems(state)
    status_queries = _load_status_queries(state)
    services, shared = _load_services(state, status_queries)
    routes = _load_routes(state, services, systems)
    routes += _shared_routes(state, status_queries, shared, services, systems, routes)
    _follow_problems(state, services, routes, status_queries)
    if not state.routes_unreadable:  # no route is missing from a file that could not be read
        state.problems.extend(_linked_route_problems(services, routes))
    clients = _load_clients(state, services, gateway)
    idps = _load_idps(state, gateway)
    problems += _window_problems(clients, idps, gateway.identity if gateway else None)
    legacy_apps = _load_legacy_apps(state, gateway)
    licences = _load_licences(state, systems, services, gateway)
    if problems or gateway is None:
        return None
    return Settings(
        config_dir,
        gateway,
        systems,
        services,
        tuple(routes),
        clients,
        idps=idps,
        legacy_apps=legacy_apps,
        status_queries=status_queries,
        licences=licences,
    )


def _load_licences(
    state: _Loading,
    systems: Mapping[str, SystemSettings],
    services: Mapping[str, ServiceSettings],
    gateway: GatewaySettings | None,
) -> LicenceCatalogue:
    """licences.yaml (optional), entry by entry, checked against the systems and the services'
    licence materials (免证办)."""
    path = state.config_dir / "licences.yaml"
    problems = state.problems
    data = _read_yaml(path, problems) if path.exists() else {}
    broken: set[str] = set()
    catalogue = LicenceCatalogue()
    if data is _UNREADABLE:
        broken.add("*")
    elif not isinstance(data, dict):
        problems.append("licences.yaml: expected a mapping (cache_seconds, issuers, licence_types)")
        broken.add("*")
    else:
        head = _validate(
            LicenceCatalogue,
            {k: v for k, v in data.items() if k not in ("issuers", "licence_types")},
            "licences.yaml",
            problems,
        )
        issuers: dict[str, IssuerSettings] = {}
        for province, entry in (data.get("issuers") or {}).items():
            found = _validate(
                IssuerSettings,
                entry,
                f"licences.yaml: issuers.{province}",
                problems,
                resolve=state.resolve,
            )
            if found is not None:
                issuers[str(province)] = found
        types: dict[str, LicenceType] = {}
        for code, entry in (data.get("licence_types") or {}).items():
            where = f"licences.yaml: licence_types.{code}"
            licence = _validate(LicenceType, entry, where, problems)
            if licence is None:
                broken.add(str(code))
            else:
                types[str(code)] = licence
        catalogue = (head or LicenceCatalogue()).model_copy(
            update={"issuers": issuers, "licence_types": types}
        )
        usable = {sid: system for sid, system in systems.items() if sid not in state.broken}
        unsure = state.systems_unreadable or bool(state.broken & state.raw_systems.keys())
        problems.extend(
            p
            for p in licence_problems(catalogue, usable, PROVINCES)
            if not (unsure and ": system: no system " in p)
            and not (len(issuers) < len(data.get("issuers") or {}) and "no issuer for" in p)
        )
    for code, service in services.items():
        uses = {
            m.code: m.licence
            for m in service.materials
            if m.licence is not None and (m.licence.type or "") not in broken and "*" not in broken
        }
        if not uses:
            continue
        if service.linked is not None:
            schemas = [service.linked.input_schema]
        else:
            schemas = [o.input_schema for o in service.operations.values() if o.kind == "submit"]
        problems.extend(licence_use_problems(catalogue, code, uses, schemas))
        identity = gateway.identity if gateway is not None else None
        if gateway is not None and (identity is None or identity.link_secret is None):
            problems.append(
                f"services/{code}.yaml: materials: licences are matched to their holder by the"
                " link key: set gateway.yaml identity.link_secret"
            )
    return catalogue


def _load_systems(state: _Loading) -> dict[str, SystemSettings]:
    problems = state.problems
    systems: dict[str, SystemSettings] = {}
    data = _read_yaml(state.config_dir / "systems.yaml", problems)
    state.systems_unreadable = data is _UNREADABLE
    raw = _entries(data, "systems", "systems.yaml", problems)
    for sid, entry in raw.items():
        where = f"systems.yaml: system {sid!r}"
        if not _ID.match(str(sid)):
            problems.append(f"{where}: id: use lowercase letters, digits and '-'")
            continue
        if isinstance(entry, dict):
            state.raw_systems[sid] = entry
        system = _validate(SystemSettings, entry, where, problems)
        if system is None:
            state.broken.add(sid)
            continue
        systems[sid] = system
        _check_adapter(state, sid, system, where)
    return systems


def _load_status_queries(state: _Loading) -> dict[str, StatusQuery]:
    path = state.config_dir / "status-queries.yaml"
    if not path.exists():
        return {}
    problems = state.problems
    raw = _entries(_read_yaml(path, problems), "status_queries", path.name, problems)
    queries: dict[str, StatusQuery] = {}
    for name, entry in raw.items():
        where = f"status-queries.yaml: status query {name!r}"
        if not _ID.match(str(name)):
            problems.append(f"{where}: id: use lowercase letters, digits and '-'")
            continue
        query = _validate(StatusQuery, entry, where, problems)
        if query is None:
            continue
        operation = _validate(Operation, query.operation, f"{where}: operation", problems)
        if operation is not None and operation.kind == "submit":
            problems.append(f"{where}: operation.kind: a status query is a query, not a submit")
            continue
        queries[name] = query
    return queries


def _load_services(
    state: _Loading, queries: Mapping[str, StatusQuery]
) -> tuple[dict[str, ServiceSettings], dict[str, set[str]]]:
    """The services, each with the shared status queries its cases name added as operations
    (returned per service, for their routes)."""
    problems = state.problems
    services: dict[str, ServiceSettings] = {}
    shared: dict[str, set[str]] = {}
    services_dir = state.config_dir / "services"
    for path in sorted(services_dir.glob("*.yaml")) if services_dir.is_dir() else []:
        code = path.stem
        where = f"services/{path.name}: service {code!r}"
        if not _ID.match(code):
            problems.append(f"{where}: file name: use lowercase letters, digits and '-'")
            continue
        data = _read_yaml(path, problems, name=f"services/{path.name}")
        if data is _UNREADABLE:
            state.broken.add(code)
            continue
        if isinstance(data, dict) and isinstance(data.get("operations"), dict):
            named = _shared_names(data["operations"], queries)
            if named:
                data = {
                    **data,
                    "operations": {
                        **data["operations"],
                        **{name: queries[name].operation for name in named},
                    },
                }
                shared[code] = named
            state.raw_service_ops[code] = set(data["operations"])
        service = _validate(ServiceSettings, data, where, problems)
        if service is None:
            state.broken.add(code)
        else:
            problems += [f"{where}: {p}" for p in subject_problems(service)]
            services[code] = service
    return services, shared


def _shared_names(operations: Mapping[str, Any], queries: Mapping[str, StatusQuery]) -> set[str]:
    """Shared status queries the operations' case blocks name and the service does not declare."""
    named: set[str] = set()
    for block in operations.values():
        case = block.get("case") if isinstance(block, dict) else None
        if not isinstance(case, dict):
            continue
        for key in ("poll_with", "reconcile_with"):
            name = case.get(key)
            if isinstance(name, str) and name in queries and name not in operations:
                named.add(name)
    return named


def _load_routes(
    state: _Loading,
    services: Mapping[str, ServiceSettings],
    systems: Mapping[str, SystemSettings],
) -> list[RouteSettings]:
    problems = state.problems
    routes: list[RouteSettings] = []
    raw_routes = _read_yaml(state.config_dir / "routes.yaml", problems)
    if raw_routes is _UNREADABLE:
        state.routes_unreadable = True
        return routes
    if isinstance(raw_routes, dict) and set(raw_routes) - {"routes"}:
        for other in sorted(set(raw_routes) - {"routes"}):
            problems.append(
                f"routes.yaml: {other}: unknown key{suggestion(str(other), ['routes'])}"
            )
    route_list = raw_routes.get("routes") if isinstance(raw_routes, dict) else None
    if not isinstance(route_list, list):
        if not (isinstance(raw_routes, dict) and set(raw_routes) - {"routes"}):
            problems.append("routes.yaml: expected a top-level list 'routes:'")
        route_list = []
    seen: dict[tuple[str, str, str, str], int] = {}
    for index, entry in enumerate(route_list):
        where = f"routes.yaml: route #{index + 1}"
        route = _validate(RouteSettings, entry, where, problems)
        if route is None:
            continue
        where = f"{where} ({route.service}/{route.operation} → {route.handling})"
        _cross_check_route(state, route, services, systems, where)
        state.placed.append((route, where))
        receiving = ["*"] if route.receiving == "*" else route.receiving
        for province in receiving:
            key = (route.service, route.operation, province, route.handling)
            if key in seen:
                problems.append(f"{where}: receiving: duplicates route #{seen[key]}")
            seen[key] = index + 1
        routes.append(route)
    return routes


def _shared_routes(
    state: _Loading,
    queries: Mapping[str, StatusQuery],
    shared: Mapping[str, set[str]],
    services: Mapping[str, ServiceSettings],
    systems: Mapping[str, SystemSettings],
    routes: list[RouteSettings],
) -> list[RouteSettings]:
    """A route for each shared status query a service names, to every system of the service's
    routes that answers it; a route written out in routes.yaml takes precedence."""
    written = {(r.service, r.operation, r.handling) for r in routes}
    made: dict[tuple[str, str, str, str], RouteSettings] = {}
    for code, names in sorted(shared.items()):
        for name in sorted(names):
            query = queries[name]
            for route in routes:
                answer = query.answered_by.get(route.system)
                if route.service != code or answer is None:
                    continue
                if (code, name, route.handling) in written:
                    continue
                key = (code, name, route.handling, route.system)
                earlier = made.get(key)
                receiving: list[str] | Literal["*"] = route.receiving
                if earlier is not None:
                    if "*" in (earlier.receiving, route.receiving):
                        receiving = "*"
                    else:
                        receiving = sorted({*earlier.receiving, *route.receiving})
                made[key] = RouteSettings(
                    service=code,
                    operation=name,
                    receiving=receiving,
                    handling=route.handling,
                    system=route.system,
                    system_operation=answer.system_operation,
                    request=answer.request,
                    response=answer.response,
                )
            if state.routes_unreadable:
                continue
            if not any(k[:2] == (code, name) for k in made) and not any(
                (code, name) == (s, o) for s, o, _h in written
            ):
                answering = sorted(query.answered_by)
                state.problems.append(
                    f"services/{code}.yaml: service {code!r}: case: status query {name!r} is"
                    f" answered by {answering} (status-queries.yaml), and no route of the service"
                    " goes to one of them"
                )
    for (code, name, _handling, sid), route in made.items():
        where = f"status-queries.yaml: status query {name!r}: answered_by.{sid} (for {code})"
        _cross_check_route(state, route, services, systems, where)
    return list(made.values())


def _follow_problems(
    state: _Loading,
    services: Mapping[str, ServiceSettings],
    routes: list[RouteSettings],
    queries: Mapping[str, StatusQuery],
) -> None:
    """A case handled in a province is followed (polled, reconciled) there: the query its case
    block names needs a route to that province too."""
    routed = {(r.service, r.operation, r.handling) for r in routes}
    for route, where in state.placed:
        service = services.get(route.service)
        operation = service.operations.get(route.operation) if service else None
        case = operation.case if operation else None
        if case is None:
            continue
        for key in ("poll_with", "reconcile_with"):
            name = getattr(case, key)
            if name is None or (route.service, name, route.handling) in routed:
                continue
            hint = ""
            if name in queries:
                hint = f" (system {route.system!r} is not in its answered_by, status-queries.yaml)"
            state.problems.append(
                f"{where}: case.{key}: no route for {name!r} to province {route.handling}{hint}"
            )


def _load_clients(
    state: _Loading, services: Mapping[str, ServiceSettings], gateway: GatewaySettings | None
) -> dict[str, ClientRegistration]:
    problems = state.problems
    clients: dict[str, ClientRegistration] = {}
    clients_file = state.config_dir / "clients.yaml"
    raw_clients = (
        _entries(_read_yaml(clients_file, problems), "clients", "clients.yaml", problems)
        if clients_file.exists()
        else {}
    )
    for cid, entry in raw_clients.items():
        where = f"clients.yaml: client {cid!r}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        client = _validate(
            ClientRegistration, {"client_id": cid, **entry}, where, problems, resolve=state.resolve
        )
        if client is None:
            continue
        clients[cid] = client
        unknown = [
            s
            for s in client.allowed_services
            if s != "*" and s not in services and s not in state.broken
        ]
        if unknown:
            problems.append(f"{where}: allowed_services: unknown services {unknown}")
        strange = [p for p in client.provinces if p not in PROVINCES]
        if strange:
            problems.append(f"{where}: provinces: {strange} are not GB/T 2260 province codes")
    if clients and gateway is not None and gateway.identity is None:
        problems.append("gateway.yaml: identity: clients.yaml declares clients but no provider")
    return clients


def _load_idps(state: _Loading, gateway: GatewaySettings | None) -> dict[str, AnyIdpSettings]:
    problems, config_dir = state.problems, state.config_dir
    idps: dict[str, AnyIdpSettings] = {}
    idps_file = config_dir / "idps.yaml"
    raw_idps = (
        _entries(_read_yaml(idps_file, problems), "idps", "idps.yaml", problems)
        if idps_file.exists()
        else {}
    )
    for pid, entry in raw_idps.items():
        where = f"idps.yaml: idp {pid!r}"
        if not _ID.match(str(pid)):
            problems.append(f"{where}: id: use lowercase letters, digits and '-'")
            continue
        try:
            idp = IdpEntry.model_validate(entry, context={"resolve_secrets": state.resolve}).root
        except ValidationError as exc:
            _report(IdpEntry, exc, where, problems)
            continue
        if idp.province not in PROVINCES:
            problems.append(f"{where}: province: {idp.province!r} is not a GB/T 2260 code")
            continue
        wsdl = getattr(idp, "wsdl", None)
        if wsdl and not (config_dir / wsdl).is_file():
            problems.append(f"{where}: wsdl: file {wsdl} not found")
            continue
        if state.check_contracts:
            problems += [f"{where}: {p}" for p in idp_contract_problems(idp, config_dir)]
        idps[pid] = idp
    if idps and gateway is not None and gateway.identity is None:
        problems.append("gateway.yaml: identity: idps.yaml declares platforms but no provider")
    return idps


def _load_legacy_apps(
    state: _Loading, gateway: GatewaySettings | None
) -> dict[str, LegacyAppSettings]:
    problems = state.problems
    legacy_apps: dict[str, LegacyAppSettings] = {}
    legacy_file = state.config_dir / "legacy-apps.yaml"
    raw_legacy = (
        _entries(_read_yaml(legacy_file, problems), "legacy_apps", "legacy-apps.yaml", problems)
        if legacy_file.exists()
        else {}
    )
    for app_id, entry in raw_legacy.items():
        where = f"legacy-apps.yaml: app {app_id!r}"
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", str(app_id)):
            problems.append(f"{where}: id: use letters, digits, '_', '.' and '-'")
            continue
        app = _validate(LegacyAppSettings, entry, where, problems, resolve=state.resolve)
        if app is not None:
            legacy_apps[app_id] = app
    for app_id, app in legacy_apps.items():
        for target in app.may_proxy_to:
            other = legacy_apps.get(target)
            if target == app_id or other is None or other.face != "ticket":
                problems.append(
                    f"legacy-apps.yaml: app {app_id!r}: may_proxy_to: {target!r} is not another"
                    " registered ticket-face app"
                )
    if legacy_apps and gateway is not None and gateway.identity is None:
        problems.append("gateway.yaml: identity: legacy-apps.yaml declares apps but no provider")
    return legacy_apps


def _linked_route_problems(
    services: Mapping[str, ServiceSettings], routes: list[RouteSettings]
) -> list[str]:
    """Each linked part with a fixed province has a route there, and a part that reads another
    part's answer reads a field that part's route answers (when its response mapping names
    them)."""
    problems: list[str] = []
    for code, service in services.items():
        if service.linked is None:
            continue
        parts = service.linked.parts
        answers: dict[str, set[str]] = {}
        for name, part in parts.items():
            mine = [
                r
                for r in routes
                if r.service == code
                and r.operation == part.operation
                and (part.handling is None or r.handling == part.handling)
            ]
            where = f"services/{code}.yaml: service {code!r}: linked.parts.{name}"
            if not mine:
                province = part.handling or "any province"
                problems.append(
                    f"{where}.operation: no route in routes.yaml for {part.operation!r} in"
                    f" {province}"
                )
                continue
            if all(r.response is not None for r in mine):
                answers[name] = {str(k).split(".")[0] for r in mine for k in r.response or {}}
        for name, part in parts.items():
            for target, source in (part.input or {}).items():
                path = source if isinstance(source, str) else source.get("from")
                if not isinstance(path, str) or not path.startswith("parts."):
                    continue
                _, other, *rest = [*path.split("."), ""]
                known = answers.get(other)
                if known is not None and rest and rest[0] and rest[0] not in known:
                    problems.append(
                        f"services/{code}.yaml: service {code!r}: linked.parts.{name}.input."
                        f"{target}: part {other!r} answers {sorted(known)}, not {rest[0]!r}"
                    )
    return problems


def _window_problems(
    clients: Mapping[str, ClientRegistration],
    idps: Mapping[str, AnyIdpSettings],
    identity: ProviderSettings | None,
) -> list[str]:
    """Window clients sign clerks in through a staff directory, and their token exchange
    resolves persons by the cross-province link key (gateway/identity/token_exchange.py)."""
    problems: list[str] = []
    windows = sorted(cid for cid, client in clients.items() if client.window)
    if windows and not any(getattr(idp, "staff", None) for idp in idps.values()):
        problems.append(
            f"clients.yaml: window clients {windows} need a staff directory in idps.yaml (staff:)"
        )
    for cid, client in clients.items():
        exchange = TOKEN_EXCHANGE in client.grant_types
        if exchange and identity is not None and identity.link_secret is None:
            problems.append(
                f"clients.yaml: client {cid!r}: grant_types: token exchange needs"
                " gateway.yaml identity.link_secret (persons are resolved by the link key)"
            )
    return problems


def _check_adapter(state: _Loading, sid: str, system: SystemSettings, where: str) -> None:
    """The adapter's own check of the system's blocks; for a contracted adapter (SOAP), against
    its contract, which is kept for the routes' mapping checks."""
    problems = state.problems
    if system.wsdl and not (state.config_dir / system.wsdl).is_file():
        problems.append(f"{where}: wsdl: file {system.wsdl} not found")
        return
    try:
        spec = system.spec(sid, state.config_dir, resolve_secrets=state.resolve)
    except ValueError as exc:
        problems.append(f"{where}: auth.{exc}")
        return
    try:
        factory = load_adapter_factory(system.adapter_name)
        if state.check_contracts and isinstance(factory, ContractedFactory):
            state.contracts[sid] = factory.contract(spec)
        else:
            factory.check(spec)
    except AdapterConfigError as exc:
        problems += [f"{where}: {e.field}: {e.message}" for e in exc.all()]


def _cross_check_route(
    state: _Loading,
    route: RouteSettings,
    services: Mapping[str, ServiceSettings],
    systems: Mapping[str, SystemSettings],
    where: str,
) -> None:
    """The route against its service, its system and the system's contract. A service or system
    that failed validation is checked as far as its file can be read."""
    problems = state.problems
    service = services.get(route.service)
    operations = (
        set(service.operations) if service else state.raw_service_ops.get(route.service, set())
    )
    if service is None and route.service not in state.broken:
        problems.append(
            f"{where}: service: no service {route.service!r} in services/"
            f"{suggestion(route.service, list(services) + sorted(state.broken))}"
        )
    elif operations and route.operation not in operations:
        problems.append(
            f"{where}: operation: service {route.service!r} has no operation {route.operation!r}"
            f"{suggestion(route.operation, operations)}"
        )
    system = systems.get(route.system)
    raw_system = state.raw_systems.get(route.system, {})
    if system is None and route.system not in state.broken and not state.systems_unreadable:
        problems.append(
            f"{where}: system: no system {route.system!r} in systems.yaml"
            f"{suggestion(route.system, list(systems) + sorted(state.broken))}"
        )
    province = system.province if system else raw_system.get("province")
    if province is not None and province != route.handling:
        problems.append(
            f"{where}: system: {route.system!r} is in province {province}, "
            f"not the handling province {route.handling}"
        )
    system_ops = system.operations if system else raw_system.get("operations")
    if isinstance(system_ops, dict) and system_ops and route.system_operation not in system_ops:
        problems.append(
            f"{where}: system_operation: {route.system!r} has no operation "
            f"{route.system_operation!r}{suggestion(route.system_operation, system_ops)}"
        )
    maps: dict[str, FieldMapping] = {}
    for side in ("request", "response"):
        try:
            maps[side] = compile_mapping(getattr(route, side), resolve_secrets=state.resolve)
        except MappingError as exc:
            problems.append(f"{where}: {side}.{exc.field}: {exc.message}")
    contract = state.contracts.get(route.system)
    operation = contract.operations.get(route.system_operation) if contract else None
    if operation is None:
        return
    label = route.system_operation
    if "request" in maps:
        if maps["request"].rules:
            found = request_problems(maps["request"], operation.input, label)
        else:
            schema = service.operations[route.operation].input_schema if service else None
            found = passthrough_problems(schema, operation.input, label)
        problems += [f"{where}: request{loc}: {message}" for loc, message in found]
    if "response" in maps:
        found = response_problems(maps["response"], operation.output, label)
        problems += [f"{where}: response{loc}: {message}" for loc, message in found]
