"""Staff directories: the only identity platforms whose logins carry staff roles.

A window clerk signs in at the gateway like a citizen, but through a platform that
config/idps.yaml declares a staff directory (a ``staff:`` block on the entry). Its roles claim is
read declaratively (claim name, optional value map) and kept only where the configured
``allowed_roles`` list names it; a staff login with no allowed role is refused. Every other
platform is a citizen platform: whatever roles its answer asserts are never read, so a citizen
account cannot make itself a clerk (tests/unit/identity/test_staff.py,
tests/flows/test_clerk_token_exchange.py).

A staff identity is its own local user (``staff:<platform>:<staff id>``): it is never linked to
the person with the same ID number (no link key), so a clerk who is also a citizen keeps two
identities, and a citizen session never satisfies a window client nor a staff session a citizen
portal (gateway/identity/sso.py).

Must not: import aiohttp; log a staff member's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.identity.citizen import FederatedIdentity, MappingError

StaffRole = Literal["clerk", "operator", "auditor"]
"""Staff roles the gateway knows (gateway/principal.py): window clerk, operator, auditor."""


class StaffDirectory(BaseModel):
    """An identity platform's ``staff:`` block: where its roles are and which ones count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles_claim: str = Field("roles", min_length=1)
    """Claim holding the staff member's roles: a list of strings or one space- or
    comma-separated string; dots walk into nested objects (``org.roles``)."""
    role_map: dict[str, StaffRole] = Field(default_factory=dict)
    """The directory's own role name → gateway role (e.g. ``窗口受理: clerk``); a name not in
    the map is kept as it is (and then counts only if it is a gateway role that is allowed)."""
    allowed_roles: tuple[StaffRole, ...] = Field(("clerk",), min_length=1)
    """Roles a session from this directory may carry; the rest are dropped."""

    @model_validator(mode="after")
    def _mapped_roles_allowed(self) -> StaffDirectory:
        unused = set(self.role_map.values()) - set(self.allowed_roles)
        if unused:
            raise ValueError(f"role_map maps to roles not in allowed_roles: {sorted(unused)}")
        return self


def _walk(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def staff_roles(directory: StaffDirectory, claims: Mapping[str, Any]) -> frozenset[str]:
    """The allowed gateway roles the directory's answer grants (possibly none)."""
    raw = _walk(claims, directory.roles_claim)
    if isinstance(raw, str):
        names = raw.replace(",", " ").split()
    elif isinstance(raw, list):
        names = [item for item in raw if isinstance(item, str)]
    else:
        names = []
    mapped = {directory.role_map.get(name.strip(), name.strip()) for name in names}
    return frozenset(mapped & set(directory.allowed_roles))


def as_staff(
    identity: FederatedIdentity, directory: StaffDirectory, claims: Mapping[str, Any]
) -> FederatedIdentity:
    """The directory's login as a staff identity; ``MappingError`` when no role is allowed."""
    roles = staff_roles(directory, claims)
    if not roles:
        raise MappingError(f"claim {directory.roles_claim!r} grants no allowed staff role")
    # Never linked to a citizen: a staff account is not the person's citizen account.
    return replace(identity, staff=True, roles=roles, link_key=None, person_type="natural")
