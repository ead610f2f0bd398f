"""One internal identity for every provincial platform, and the declarative claim mapping into it.

Modelled on SATOSA's internal data: each platform's attributes are mapped by configuration,
never by code, into ``FederatedIdentity``. Levels keep the platform's raw value and the name of
its scale beside the gateway's normalised level (docs/identity-platforms.md, "Levels": some
scales run backwards, so the map is per platform). The ID number is kept only when the platform's
configuration says a downstream use needs it (eIDAS minimum data set) and is masked otherwise;
``repr`` never shows it, nor the name.

Legal persons carry the enterprise's identifier and the operator (经办人) who signed in; the
local id includes the operator's link key, so one enterprise with many agents is never merged
on the enterprise alone. The identifier is a GB 32100 credit code, or, where the platform's
configuration admits them (``org_id_kinds``), the 15-digit registration number of an enterprise
registered before 2015: each kind with its own check, and the ID-number check stays on.

Must not: import aiohttp; log an ID number or a name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.identity.identifiers import (
    RESIDENT_ID_CARD,
    LinkKeyer,
    valid_credit_code,
    valid_registration_number,
    valid_resident_id,
)
from gateway.logs import mask_name, mask_text

Level = Literal["L1", "L2", "L3", "LP", "Counter"]
PersonType = Literal["natural", "legal"]
OrgIdKind = Literal["credit_code", "registration_number"]


class MappingError(ValueError):
    """The platform's answer lacks a claim the mapping needs; the message names the claim only."""


class ValueRule(BaseModel):
    """Read one claim and translate its value through ``map`` (or keep it as it is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    claim: str = Field(min_length=1)
    """Claim name in the platform's answer; dots walk into nested objects (``userobj.cn``)."""
    map: dict[str, str] | None = None
    """Raw value → internal value; a value not in the map falls back to ``default``."""
    default: str | None = None
    """Used when the claim is absent or its value is not in ``map``."""


class LevelRule(BaseModel):
    """How the platform states assurance, and how its scale maps onto L1–L3 / LP / Counter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    claim: str = "acr"
    """Claim holding the raw level."""
    scale: str = Field(min_length=1)
    """Name of the platform's scale, kept beside the raw value (e.g. 'zhejiang-authlevel')."""
    map: dict[str, Level] = Field(min_length=1)
    """Raw value → gateway level."""
    default: Level | None = None
    """Level when the claim is missing or unknown; None refuses such a login."""


class ClaimMapping(BaseModel):
    """Declarative mapping of one platform's claims into ``FederatedIdentity``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str = "sub"
    """Claim with the platform's stable user id."""
    person_type: ValueRule | None = None
    """Claim telling natural from legal persons (values mapped to 'natural' / 'legal')."""
    name: str | None = None
    id_number: str | None = None
    phone: str | None = None
    region: str | None = None
    credit_code: str | None = None
    """Claim holding the enterprise's identifier: a unified social credit code, or a
    registration number where ``org_id_kinds`` admits them (legal persons)."""
    org_id_kinds: tuple[OrgIdKind, ...] = ("credit_code",)
    """Enterprise identifiers this platform sends: ``credit_code`` (GB 32100) and, for
    enterprises registered before 2015, ``registration_number`` (15 digits, 工商注册号)."""
    operator: str | None = None
    """Operator's name (经办人) for legal persons."""
    level: LevelRule
    # National codes, the agent, the legal person (docs/identity-platforms.md, "Identifiers").
    id_type: ValueRule | None = None
    """The platform's ID type → national code (111 resident ID card, 414 passport, ...);
    absent: an ID number is a resident ID card."""
    applicant_type: ValueRule | None = None
    """The platform's person or organisation type → national applicant type (1 自然人,
    2 企业法人, ...); absent: 1 for natural and 2 for legal persons."""
    auth_method: ValueRule | None = None
    """How the person authenticated (password, certificate, face ...), as the platform says."""
    org_name: str | None = None
    """Company or organisation name (legal persons)."""
    legal_representative: str | None = None
    """Legal representative's name (legal persons)."""
    agent_id_type: ValueRule | None = None
    """The agent's ID type → national code (legal persons)."""
    agent_id_number: str | None = None
    """The agent's ID number (legal persons); masked at once, used only for the link key."""
    agent_phone: str | None = None
    check_digits: bool = True
    """Refuse resident ID numbers failing GB 11643, credit codes failing GB 32100 and
    registration numbers failing their check digit. Admit legacy enterprises with
    ``org_id_kinds``, never by switching this off."""

    @model_validator(mode="after")
    def _person_values(self) -> ClaimMapping:
        rule = self.person_type
        if rule is not None and rule.map is not None:
            bad = set(rule.map.values()) - {"natural", "legal"}
            if bad:
                raise ValueError(f"person_type maps to {sorted(bad)}; use natural or legal")
        return self


def natural_person_id(link_key: str) -> str:
    """The local id of the natural person with this link key, however they were identified
    (a provincial platform's login, or an ID document read at a window: token_exchange.py)."""
    return f"person:{link_key}"


def _lookup(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _text(claims: Mapping[str, Any], path: str | None) -> str | None:
    if path is None:
        return None
    value = _lookup(claims, path)
    if value is None or isinstance(value, Mapping | list):
        return None
    text = str(value).strip()
    return text or None


def _rule(claims: Mapping[str, Any], rule: ValueRule) -> str | None:
    raw = _text(claims, rule.claim)
    if raw is None:
        return rule.default
    if rule.map is None:
        return raw
    return rule.map.get(raw, rule.default)


@dataclass(frozen=True, slots=True, repr=False)
class FederatedIdentity:
    """Who signed in at a provincial platform, in the gateway's own terms."""

    platform: str
    """Identity platform id from config/idps.yaml."""
    user_id: str
    """The platform's own user id."""
    person_type: PersonType
    level: Level
    level_raw: str
    """The platform's own level value, as sent."""
    level_scale: str
    """Name of the platform's scale (levels are per-platform configuration)."""
    name: str | None = None
    id_number: str | None = None
    """Full number only when the platform is configured to keep it; masked otherwise."""
    phone: str | None = None
    region: str | None = None
    credit_code: str | None = None
    operator: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    registration_number: str | None = None
    """An enterprise registered before 2015: its 15-digit registration number (no credit code)."""
    applicant_type: str = "1"
    """National applicant type (1 自然人, 2 企业法人, ...)."""
    id_type: str | None = None
    """National ID-type code (111 resident ID card, ...)."""
    id_type_raw: str | None = None
    """The platform's own ID-type value."""
    auth_method: str | None = None
    org_name: str | None = None
    legal_representative: str | None = None
    agent_id_type: str | None = None
    agent_id_number: str | None = None
    """Always masked."""
    agent_phone: str | None = None
    link_key: str | None = None
    """Keyed hash of the (agent's) ID type and number: the same person in every province."""
    staff: bool = False
    """Signed in at a staff directory (gateway/identity/staff.py), not a citizen platform."""
    roles: frozenset[str] = frozenset()
    """Staff roles granted by a staff directory; always empty for a citizen platform."""

    @property
    def local_id(self) -> str:
        """Stable internal id; appears in tokens only as a pairwise ``sub`` (OIDC Core §8.1).

        With a link key, a natural person is one local user whichever province they signed in
        through; a legal person's account is the (enterprise, agent) pair, never the enterprise
        alone (one enterprise has many accounts, one per agent). A staff account is never the
        person's citizen account (gateway/identity/staff.py)."""
        if self.staff:
            return f"staff:{self.platform}:{self.user_id}"
        if self.link_key and self.person_type == "natural":
            return natural_person_id(self.link_key)
        if self.link_key and self.org_id:
            return f"legal:{self.org_id}:{self.link_key}"
        return f"{self.platform}:{self.user_id}"

    @property
    def org_id(self) -> str | None:
        """The enterprise's identifier: its credit code, or ``reg:`` and its registration
        number (the two kinds never collide: 18 characters against 15 digits)."""
        if self.credit_code:
            return self.credit_code
        return f"reg:{self.registration_number}" if self.registration_number else None

    def userinfo_claims(self) -> dict[str, Any]:
        """Standard claims (OIDC Core §5.1) released per scope at userinfo; no ID number."""
        claims: dict[str, Any] = {}
        if self.name:
            claims["name"] = self.name
        if self.phone:
            claims["phone_number"] = self.phone
        if self.region:
            claims["locale"] = "zh-CN"
        if self.staff:
            # The staff number (工号) is shown at the window anyway; a citizen's platform id is not.
            claims["preferred_username"] = self.user_id
        return claims

    def __repr__(self) -> str:
        return (
            f"FederatedIdentity(platform={self.platform!r}, person_type={self.person_type!r}, "
            f"level={self.level!r}, name={mask_name(self.name or '')!r})"
        )


def map_claims(
    platform: str,
    mapping: ClaimMapping,
    claims: Mapping[str, Any],
    *,
    keep_id_number: bool = False,
    linker: LinkKeyer | None = None,
) -> FederatedIdentity:
    """The platform's claims → ``FederatedIdentity``; ``MappingError`` names a missing claim.

    ``linker`` turns the (agent's) national ID type and number into the link key before the
    number is masked."""
    user_id = _text(claims, mapping.user_id)
    if user_id is None:
        raise MappingError(f"claim {mapping.user_id!r} (user id) is missing")
    person = "natural"
    if mapping.person_type is not None:
        person = _rule(claims, mapping.person_type) or "natural"
    if person not in ("natural", "legal"):
        raise MappingError(f"claim {mapping.person_type and mapping.person_type.claim!r}")
    raw_level = _text(claims, mapping.level.claim)
    level = mapping.level.map.get(raw_level or "", mapping.level.default)
    if level is None:
        raise MappingError(f"claim {mapping.level.claim!r} (level) is missing or unknown")
    if person == "legal" and level in ("L3", "LP"):
        # Only a strongly checked account acts for an enterprise at LP; a weakly checked one
        # keeps its lower level (Zhejiang realLevel 3 / 4).
        level = "LP"
    id_number = _text(claims, mapping.id_number)
    id_type_raw, id_type = _id_type(claims, mapping.id_type, id_number)
    agent_number = _text(claims, mapping.agent_id_number)
    _agent_raw, agent_type = _id_type(claims, mapping.agent_id_type, agent_number)
    credit_code, registration_number = _org_id(claims, mapping)
    if mapping.check_digits:
        _check_number(id_type, id_number, mapping.id_number)
        _check_number(agent_type, agent_number, mapping.agent_id_number)
    link_key = None
    if linker is not None:
        if person == "legal" and agent_number and agent_type:
            link_key = linker(agent_type, agent_number)
        elif person == "natural" and id_number and id_type:
            link_key = linker(id_type, id_number)
    if id_number is not None and not keep_id_number:
        id_number = mask_text(id_number)
    applicant = _rule(claims, mapping.applicant_type) if mapping.applicant_type else None
    return FederatedIdentity(
        platform=platform,
        user_id=user_id,
        person_type="legal" if person == "legal" else "natural",
        level=level,
        level_raw=raw_level or "",
        level_scale=mapping.level.scale,
        name=_text(claims, mapping.name),
        id_number=id_number,
        phone=_text(claims, mapping.phone),
        region=_text(claims, mapping.region),
        credit_code=credit_code,
        registration_number=registration_number,
        operator=_text(claims, mapping.operator),
        applicant_type=applicant or ("2" if person == "legal" else "1"),
        id_type=id_type,
        id_type_raw=id_type_raw,
        auth_method=_rule(claims, mapping.auth_method) if mapping.auth_method else None,
        org_name=_text(claims, mapping.org_name),
        legal_representative=_text(claims, mapping.legal_representative),
        agent_id_type=agent_type if agent_number else None,
        agent_id_number=mask_text(agent_number) if agent_number else None,
        agent_phone=_text(claims, mapping.agent_phone),
        link_key=link_key,
    )


def _org_id(claims: Mapping[str, Any], mapping: ClaimMapping) -> tuple[str | None, str | None]:
    """(credit code, registration number): the enterprise identifier, by its kind."""
    value = _text(claims, mapping.credit_code)
    if value is None:
        return None, None
    value = value.upper()
    legacy = "registration_number" in mapping.org_id_kinds
    if legacy and len(value) == 15 and value.isdigit():
        if mapping.check_digits and not valid_registration_number(value):
            raise MappingError(f"claim {mapping.credit_code!r} fails the registration-number check")
        return None, value
    if "credit_code" not in mapping.org_id_kinds:
        raise MappingError(f"claim {mapping.credit_code!r} is not a registration number")
    if mapping.check_digits and not valid_credit_code(value):
        raise MappingError(f"claim {mapping.credit_code!r} fails the GB 32100 check")
    return value, None


def _id_type(
    claims: Mapping[str, Any], rule: ValueRule | None, number: str | None
) -> tuple[str | None, str | None]:
    """(raw, national) ID type; a number with no type rule is a resident ID card."""
    if rule is None:
        return None, RESIDENT_ID_CARD if number else None
    return _text(claims, rule.claim), _rule(claims, rule)


def _check_number(id_type: str | None, number: str | None, claim: str | None) -> None:
    if number is not None and id_type == RESIDENT_ID_CARD and not valid_resident_id(number):
        raise MappingError(f"claim {claim!r} fails the GB 11643 check")
