"""The licence catalogue (config/licences.yaml): licence types, their issuers and seal keys.

    cache_seconds: 60            how long a verification at the issuer is trusted
    issuers:                     one per issuing province (GB/T 2260 code)
      "61":
        name: {zh: ..., en: ...}
        system: shaanxi-licence  a system of systems.yaml in that province (SOAP or REST)
        operations: {search: ..., fetch: ..., verify: ...}   the system's own operation names
        seal_keys:               the issuer's published seal keys, by key id (rotation)
          sx-seal-2026: {algorithm: ES256, public_key: "-----BEGIN PUBLIC KEY-----...",
                         not_before: 2026-01-01T00:00:00Z, not_after: null}
    licence_types:
      birth-medical-certificate:
        name: {zh: 出生医学证明, en: Birth medical certificate}
        national_code: ...       the national catalogue's type code, where one exists
        holder: person | enterprise
        fields: {name: {zh: ..., en: ..., sensitive: true}}
        issued_in:               provinces whose issuer holds it; per province the system and
          "61": {}               operations may differ from the issuer's defaults

Checked by ``tongban config check`` (``licence_problems``). Must not: import gateway.settings
(the settings loader imports this), aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from gateway.licences.seal import SealAlgorithm, SealKey, SealKeyRing, load_public_key
from gateway.mapping import MappingError, compile_mapping
from gateway.ratelimit.config import Rate
from gateway.secrets import SecretRef

HolderKind = Literal["person", "enterprise"]
OPERATIONS = ("search", "fetch", "verify")
LICENCE_STATUSES = ("valid", "changed", "expired", "revoked", "cancelled")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Names(_Model):
    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class LicenceField(_Model):
    zh: str = Field(min_length=1)
    en: str | None = None
    sensitive: bool = False
    """Personal or confidential: masked wherever the field is shown to anyone but the holder,
    and never written to a log."""


class IssuerStep(_Model):
    """One operation of an issuer's system whose messages differ from the gateway's shapes
    (a SOAP system's, say): mappings as a route's (gateway/mapping.py)."""

    operation: str
    """The system's own operation name."""
    request: dict[str, Any] | None = None
    """Mapping from the gateway's request (docs/licences.md) to the system's payload."""
    response: dict[str, Any] | None = None
    """Mapping from the system's answer to the gateway's shape."""

    @model_validator(mode="after")
    def _mappings_compile(self) -> IssuerStep:
        for side in ("request", "response"):
            try:
                compile_mapping(getattr(self, side), resolve_secrets=False)
            except MappingError as exc:
                raise ValueError(f"{side}.{exc.field}: {exc.message}") from None
        return self


def _named(value: Any) -> Any:
    return {"operation": value} if isinstance(value, str) else value


Step = Annotated[IssuerStep, BeforeValidator(_named)]
"""An operation name, or {operation, request, response}."""


def step_of(step: IssuerStep) -> IssuerStep:
    return step


class IssuerOperations(_Model):
    search: Step
    """Finds a holder's licences of one type: (type, holder id type + number, number?) →
    [{number, status}]. An operation name, or {operation, request, response} with mappings."""
    fetch: Step
    """The sealed licence: {licence: {...}, seal: {kid, alg, value}}."""
    verify: Step
    """The issuer's current word on one licence: (type, number, data digest) → status."""


class SealKeySettings(_Model):
    algorithm: SealAlgorithm = "ES256"
    """The signature scheme of seals made with this key."""
    public_key: str = Field(min_length=1)
    """The issuer's published verification key, PEM (SubjectPublicKeyInfo). Public: inline."""
    not_before: datetime | None = None
    not_after: datetime | None = None
    """Seals under this key are accepted only while the key is within this window (UTC)."""

    @field_validator("public_key")
    @classmethod
    def _pem(cls, value: str) -> str:
        load_public_key(value)  # ValueError names what is wrong
        return value


class IssuerSettings(_Model):
    name: _Names
    system: str
    """System id (systems.yaml) of the issuer's licence system, in the issuing province."""
    operations: IssuerOperations
    seal_keys: dict[str, SealKeySettings] = Field(min_length=1)
    """Key id → key. Keep a retired key while licences sealed with it are in use."""
    poll_seconds: float | None = Field(None, gt=0)
    """Ask the issuer this often about the licences of cases not yet closed (an issuer that
    does not push its changes); None: not polled."""
    notice_secret: SecretRef | None = None
    """The key the issuer signs its status-change notices with (HMAC-SHA256, as case
    callbacks are signed): ``POST /api/v1/callbacks/licences/{province}``. None: no notices."""

    def key_ring(self) -> SealKeyRing:
        return SealKeyRing(
            SealKey(
                kid,
                key.algorithm,
                load_public_key(key.public_key),
                key.not_before,
                key.not_after,
            )
            for kid, key in self.seal_keys.items()
        )


class IssuedIn(_Model):
    system: str | None = None
    """Another system than the issuer's default for this type."""
    operations: IssuerOperations | None = None
    """Other operation names than the issuer's default for this type."""


class LicenceType(_Model):
    name: _Names
    national_code: str | None = Field(None, pattern=r"^[0-9A-Z]{6,32}$")
    """Type code in the national licence catalogue, where the type has one."""
    holder: HolderKind
    fields: dict[str, LicenceField] = Field(default_factory=dict)
    """The licence's fields (``fields.<name>`` of the issuer's data)."""
    issued_in: dict[str, IssuedIn] = Field(default_factory=dict)
    """Issuing province → where and how its licences of this type are searched, fetched and
    verified; empty: the type is known but no issuer is connected yet."""


class LicenceCatalogue(_Model):
    cache_seconds: float = Field(60.0, ge=0, le=3600)
    """How long a valid answer of the issuer is reused (0: never); a change notice drops it."""
    issuers: dict[str, IssuerSettings] = Field(default_factory=dict)
    licence_types: dict[str, LicenceType] = Field(default_factory=dict)
    bulk_limit: Rate | None = "1000/day"
    """Uses of one licence type a requester (client) may make without the issuer's approval
    (批量用证), as a rate (``1000/day``); None: no limit."""
    bulk_approved: dict[str, dict[str, Rate]] = Field(default_factory=dict)
    """Client id → licence type → the volume its issuer approved for that requester."""

    def system_for(self, type_code: str, province: str) -> tuple[str, IssuerOperations]:
        issued = self.licence_types[type_code].issued_in[province]
        issuer = self.issuers[province]
        return issued.system or issuer.system, issued.operations or issuer.operations


class LicenceUse(_Model):
    """A material of a service given as an electronic licence (免证办): the gateway finds and
    verifies it at its issuer at intake instead of asking the applicant for a file."""

    type: str | None = None
    """A licence type of licences.yaml."""
    type_from: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Or: dotted path, in the application data, of the licence type (a service about licences
    of any type: 异议复核)."""
    holder_id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Dotted path, in the application data, of the holder's ID number (a person) or credit
    code (an enterprise): the case's data subject, whose licence it must be."""
    holder_id_type: str = "111"
    """National ID type of ``holder_id`` (111: resident ID card); ignored for enterprises."""
    issuing_province: str | None = None
    """Where the licence is issued, when the service knows it; else ``issuing_province_from``."""
    issuing_province_from: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Dotted path, in the application data, of the issuing province."""
    deliver_as: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,40}$")
    """Top-level field of the application data the gateway fills with the verified licence
    references for the handling province (the applicant must not send it)."""
    with_data: bool = False
    """Send the licence's data too (only where the province pair's agreement allows it)."""
    at_issuer: bool = False
    """The case goes to the licence's issuer (异议复核): its handling province must be the
    licence's issuing province."""
    show: list[str] = Field(default_factory=list)
    """The licence's fields this service needs to see when a holder presents the licence
    (亮证): shown in clear to its verifier; every other field is masked."""

    @model_validator(mode="after")
    def _one_type(self) -> LicenceUse:
        if (self.type is None) == (self.type_from is None):
            raise ValueError("name the licence type: type, or type_from (not both)")
        if self.type_from is not None and self.show:
            raise ValueError("show needs a fixed type")
        return self


class _System(Protocol):
    @property
    def province(self) -> str: ...

    @property
    def operations(self) -> dict[str, dict[str, Any]]: ...


def licence_problems(
    catalogue: LicenceCatalogue, systems: Mapping[str, _System], provinces: Mapping[str, Any]
) -> list[str]:
    """Cross-checks of licences.yaml against systems.yaml, as 'licences.yaml: where: what'."""
    problems: list[str] = []
    for province, issuer in catalogue.issuers.items():
        where = f"licences.yaml: issuers.{province}"
        if province not in provinces:
            problems.append(f"{where}: {province!r} is not a GB/T 2260 province code")
        problems += _system_problems(where, issuer.system, issuer.operations, province, systems)
    for code, licence in catalogue.licence_types.items():
        for province, issued in licence.issued_in.items():
            where = f"licences.yaml: licence_types.{code}.issued_in.{province}"
            found = catalogue.issuers.get(province)
            if found is None:
                problems.append(f"{where}: no issuer for province {province} under issuers")
                continue
            if issued.system is None and issued.operations is None:
                continue
            problems += _system_problems(
                where,
                issued.system or found.system,
                issued.operations or found.operations,
                province,
                systems,
            )
    return problems


def _system_problems(
    where: str,
    sid: str,
    operations: IssuerOperations,
    province: str,
    systems: Mapping[str, _System],
) -> list[str]:
    system = systems.get(sid)
    if system is None:
        return [f"{where}: system: no system {sid!r} in systems.yaml"]
    problems: list[str] = []
    if system.province != province:
        problems.append(
            f"{where}: system: {sid!r} is in province {system.province}, not {province}"
        )
    for name in OPERATIONS:
        op = step_of(getattr(operations, name)).operation
        if system.operations and op not in system.operations:
            problems.append(f"{where}: operations.{name}: system {sid!r} has no operation {op!r}")
    return problems


def licence_use_problems(
    catalogue: LicenceCatalogue,
    service: str,
    uses: Mapping[str, LicenceUse],
    schemas: Sequence[Mapping[str, Any]],
) -> list[str]:
    """A service's licence materials against the catalogue and its submit schemas."""
    problems: list[str] = []
    for material, use in uses.items():
        where = f"services/{service}.yaml: materials.{material}.licence"
        if use.type is None:
            continue  # named by the application: checked at intake
        licence = catalogue.licence_types.get(use.type)
        if licence is None:
            known = sorted(catalogue.licence_types)
            problems.append(
                f"{where}.type: no licence type {use.type!r} in licences.yaml; known: {known}"
            )
            continue
        if use.issuing_province is None and use.issuing_province_from is None:
            if len(licence.issued_in) != 1:
                problems.append(
                    f"{where}: name issuing_province or issuing_province_from ({use.type!r} is"
                    f" issued in {sorted(licence.issued_in) or 'no province yet'})"
                )
        elif use.issuing_province is not None and use.issuing_province not in licence.issued_in:
            problems.append(
                f"{where}.issuing_province: {use.type!r} is not issued in {use.issuing_province}"
            )
        unknown = [name for name in use.show if name not in licence.fields]
        if unknown:
            problems.append(
                f"{where}.show: {unknown} are not fields of {use.type!r}; it has"
                f" {sorted(licence.fields)}"
            )
        if use.deliver_as is not None:
            for schema in schemas:
                properties = schema.get("properties")
                if not isinstance(properties, Mapping) or use.deliver_as not in properties:
                    problems.append(
                        f"{where}.deliver_as: the application schema has no property"
                        f" {use.deliver_as!r} to carry the verified licences"
                    )
                    break
    return problems
