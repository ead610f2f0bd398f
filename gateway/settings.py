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
from typing import Any, Literal, TypeVar

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.adapter import AdapterConfigError, Secret, SystemSpec, load_adapter_factory
from gateway.cases.config import (
    CaseOperation,
    CaseSettings,
    LinkedCase,
    case_reference_problems,
)
from gateway.cases.linked import linked_problems
from gateway.identity.clients import TOKEN_EXCHANGE, ClientRegistration
from gateway.identity.config import ProviderSettings
from gateway.identity.legacy_face import LegacyAppSettings
from gateway.identity.upstream_kinds import AnyIdpSettings, IdpEntry
from gateway.mapping import MappingError, compile_mapping
from gateway.ratelimit.config import RateLimitSettings
from gateway.secrets import SecretRef, read_secret_ref

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


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    format: Literal["json", "console"] = "json"
    """JSON lines for machines (serve), readable lines for people (demo)."""


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
    """How long a batch waits for company once its first record is queued."""
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
    """Seconds between bytes of the answer."""
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
    """Resolve every secret-named field of an auth block; other fields pass through."""
    out: dict[str, Any] = {}
    for name, value in block.items():
        if name in _SECRET_KEYS:
            try:
                out[name] = _resolve_secret(value, resolve=resolve)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
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
    result_fields: dict[str, ResultField] = Field(default_factory=dict)
    """Labels of the answer's fields, by dotted path (``certificate.number``; a list's items
    under the list's path: ``contributions.year``). Display only: published in the service
    guide, never used to route, map or check anything."""

    @field_validator("input_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value


class ServiceSettings(_Model):
    name: Localized
    """Catalogue name."""
    description: Localized | None = None
    """A sentence for the guide."""
    modes: list[Mode] = Field(min_length=1)
    """Handling modes: online 全程网办, proxy 异地代收代办, joint 多地联办, window, query."""
    min_level: Level
    """Lowest identity level allowed to call it."""
    consent_required: bool = False
    """Calls must name the holder's authorisation (授权用证)."""
    time_limit_days: int | None = Field(None, ge=1)
    """Promised handling time (承诺时限) in working days."""
    materials: list[Material] = Field(default_factory=list)
    """What an application needs."""
    operations: dict[str, Operation] = Field(min_length=1)
    """What portals can do with this service."""
    audit: Literal["required", "buffered"] = "required"
    """required: no audit record, no call; buffered: read-only calls may proceed while the audit
    store is down, their records kept in a bounded local buffer."""
    linked: LinkedCase | None = None
    """一件事 (联动办理): the parts every case of this service is made of, their dependencies
    and the data passed between them; absent: a case is one operation in one or several
    provinces, as the application names them."""

    @model_validator(mode="after")
    def _case_blocks_name_operations(self) -> ServiceSettings:
        problems = case_reference_problems(self.operations)
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

    _handling_ok = field_validator("handling")(_province)

    @field_validator("receiving")
    @classmethod
    def _receiving_ok(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            for code in value:
                _province(code)
        return value


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


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(entry)"


def _read_yaml(path: Path, problems: list[str]) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{path.name}: cannot be read ({exc.strerror})")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(f"{path.name}: not valid YAML{where}")
    return None


def _validate(
    model: type[_M], data: Any, where: str, problems: list[str], *, resolve: bool = True
) -> _M | None:
    try:
        return model.model_validate(data, context={"resolve_secrets": resolve})
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(f"{where}: {_format_loc(err['loc'])}: {err['msg']}")
    return None


def _entries(data: Any, key: str, fname: str, problems: list[str]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) != {key} or not isinstance(data[key], dict):
        problems.append(f"{fname}: expected a single top-level mapping '{key}:'")
        return {}
    entries: dict[str, Any] = data[key]
    return entries


def load_settings(config_dir: Path, *, resolve_secrets: bool = True) -> Settings:
    """Read, validate and cross-check a configuration directory, or raise ConfigError."""
    config_dir = config_dir.resolve()
    problems: list[str] = []
    if not config_dir.is_dir():
        raise ConfigError([f"{config_dir}: not a directory"])

    gateway_file = config_dir / "gateway.yaml"
    gw_data = _read_yaml(gateway_file, problems) if gateway_file.exists() else {}
    gateway = _validate(
        GatewaySettings, gw_data or {}, "gateway.yaml", problems, resolve=resolve_secrets
    )

    systems: dict[str, SystemSettings] = {}
    broken: set[str] = set()  # reported already: routes naming them are not reported again
    raw_systems = _entries(
        _read_yaml(config_dir / "systems.yaml", problems), "systems", "systems.yaml", problems
    )
    for sid, entry in raw_systems.items():
        where = f"systems.yaml: system {sid!r}"
        if not _ID.match(str(sid)):
            problems.append(f"{where}: id: use lowercase letters, digits and '-'")
            continue
        system = _validate(SystemSettings, entry, where, problems)
        if system is None:
            broken.add(sid)
            continue
        systems[sid] = system
        _check_adapter(sid, system, config_dir, where, problems, resolve_secrets)

    services: dict[str, ServiceSettings] = {}
    services_dir = config_dir / "services"
    for path in sorted(services_dir.glob("*.yaml")) if services_dir.is_dir() else []:
        code = path.stem
        where = f"services/{path.name}: service {code!r}"
        if not _ID.match(code):
            problems.append(f"{where}: file name: use lowercase letters, digits and '-'")
            continue
        service = _validate(ServiceSettings, _read_yaml(path, problems), where, problems)
        if service is None:
            broken.add(code)
        else:
            services[code] = service

    routes: list[RouteSettings] = []
    raw_routes = _read_yaml(config_dir / "routes.yaml", problems)
    route_list = raw_routes.get("routes") if isinstance(raw_routes, dict) else None
    if not isinstance(route_list, list):
        problems.append("routes.yaml: expected a top-level list 'routes:'")
        route_list = []
    seen: dict[tuple[str, str, str, str], int] = {}
    for index, entry in enumerate(route_list):
        where = f"routes.yaml: route #{index + 1}"
        route = _validate(RouteSettings, entry, where, problems)
        if route is None:
            continue
        where = f"{where} ({route.service}/{route.operation} → {route.handling})"
        if route.service in broken or route.system in broken:
            continue
        _cross_check_route(route, services, systems, where, problems)
        receiving = ["*"] if route.receiving == "*" else route.receiving
        for province in receiving:
            key = (route.service, route.operation, province, route.handling)
            if key in seen:
                problems.append(f"{where}: receiving: duplicates route #{seen[key]}")
            seen[key] = index + 1
        routes.append(route)

    problems += _linked_route_problems(services, routes)

    clients: dict[str, ClientRegistration] = {}
    clients_file = config_dir / "clients.yaml"
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
            ClientRegistration,
            {"client_id": cid, **entry},
            where,
            problems,
            resolve=resolve_secrets,
        )
        if client is None:
            continue
        clients[cid] = client
        unknown = [
            s
            for s in client.allowed_services
            if s != "*" and s not in services and s not in broken  # broken: reported already
        ]
        if unknown:
            problems.append(f"{where}: allowed_services: unknown services {unknown}")
    if clients and gateway is not None and gateway.identity is None:
        problems.append("gateway.yaml: identity: clients.yaml declares clients but no provider")

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
            idp = IdpEntry.model_validate(entry, context={"resolve_secrets": resolve_secrets}).root
        except ValidationError as exc:
            kind = entry.get("kind") if isinstance(entry, dict) else None
            for err in exc.errors():
                # The union's first location is the kind's tag: name the field as written.
                loc = err["loc"][1:] if err["loc"] and err["loc"][0] == kind else err["loc"]
                problems.append(f"{where}: {_format_loc(loc)}: {err['msg']}")
            continue
        wsdl = getattr(idp, "wsdl", None)
        if wsdl and not (config_dir / wsdl).is_file():
            problems.append(f"{where}: wsdl: file {wsdl} not found")
            continue
        if idp.province not in PROVINCES:
            problems.append(f"{where}: province: {idp.province!r} is not a GB/T 2260 code")
            continue
        idps[pid] = idp
    if idps and gateway is not None and gateway.identity is None:
        problems.append("gateway.yaml: identity: idps.yaml declares platforms but no provider")
    problems += _window_problems(clients, idps, gateway.identity if gateway else None)

    legacy_apps: dict[str, LegacyAppSettings] = {}
    legacy_file = config_dir / "legacy-apps.yaml"
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
        app = _validate(LegacyAppSettings, entry, where, problems, resolve=resolve_secrets)
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

    if problems or gateway is None:
        raise ConfigError(problems)
    return Settings(
        config_dir,
        gateway,
        systems,
        services,
        tuple(routes),
        clients,
        idps=idps,
        legacy_apps=legacy_apps,
    )


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


def _check_adapter(
    sid: str,
    system: SystemSettings,
    config_dir: Path,
    where: str,
    problems: list[str],
    resolve_secrets: bool,
) -> None:
    if system.wsdl and not (config_dir / system.wsdl).is_file():
        problems.append(f"{where}: wsdl: file {system.wsdl} not found")
        return
    try:
        spec = system.spec(sid, config_dir, resolve_secrets=resolve_secrets)
    except ValueError as exc:
        problems.append(f"{where}: auth.{exc}")
        return
    try:
        load_adapter_factory(system.adapter_name).check(spec)
    except AdapterConfigError as exc:
        problems.append(f"{where}: {exc.field}: {exc.message}")


def _cross_check_route(
    route: RouteSettings,
    services: Mapping[str, ServiceSettings],
    systems: Mapping[str, SystemSettings],
    where: str,
    problems: list[str],
) -> None:
    service = services.get(route.service)
    if service is None:
        problems.append(f"{where}: service: no service {route.service!r} in services/")
    elif route.operation not in service.operations:
        problems.append(
            f"{where}: operation: service {route.service!r} has no operation {route.operation!r}"
        )
    system = systems.get(route.system)
    if system is None:
        problems.append(f"{where}: system: no system {route.system!r} in systems.yaml")
        return
    if system.province != route.handling:
        problems.append(
            f"{where}: system: {route.system!r} is in province {system.province}, "
            f"not the handling province {route.handling}"
        )
    if system.operations and route.system_operation not in system.operations:
        problems.append(
            f"{where}: system_operation: {route.system!r} has no operation "
            f"{route.system_operation!r}"
        )
    for side in ("request", "response"):
        spec = getattr(route, side)
        try:
            compile_mapping(spec)
        except MappingError as exc:
            problems.append(f"{where}: {side}.{exc.field}: {exc.message}")
