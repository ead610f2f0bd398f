"""Grants as the book keeps them, the refusals with their stable codes, and the one check.

A *consent grant* (授权用证) lets a named requester reach named services (optionally only some
operations) of one data subject for one stated purpose until an expiry, optionally a fixed
number of times. A *delegation* (委托用证) names a person as the subject's agent for named
services until an expiry: the agent's own login then presents the delegation's id, and the book
accepts it only when the signed-in person is that agent.

The requester of a consent grant is either a registered client (a portal, a window, an
institution's system) or a department: a province and the client id its system is registered
under, and the request must come from that client while it belongs to that province.

``check`` is the whole decision, pure, shared by every store: a store only finds the grant (and,
for a grant an agent gave, the delegation it was given under) and spends the use atomically.

Must not: import aiohttp or a store.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final, Literal

from gateway.consent.contract import DataSubject, GrantAsk, GrantKind, GrantRefused
from gateway.errors import Forbidden

GrantedBy = Literal["subject", "operator", "agent"]
"""Who gave the grant: the data subject itself, an enterprise's operator (经办人) on the
enterprise's behalf, or an agent under a delegation from the subject."""

GRANT_PREFIX: Final = {"consent": "cg_", "delegation": "dg_"}
MAX_SERVICES: Final = 20
MAX_USES: Final = 1000
MAX_PURPOSE: Final = 200
MAX_DAYS: Final = 366
"""The longest a grant may last: a year and a day (a yearly credit check, say)."""


def new_grant_id(kind: GrantKind) -> str:
    """An unguessable id (192 random bits): knowing it is not enough, the book also checks the
    requester, but a guessed id must not even name a grant."""
    return GRANT_PREFIX[kind] + secrets.token_urlsafe(24)


def kind_of(grant_id: str) -> GrantKind | None:
    for kind, prefix in GRANT_PREFIX.items():
        if grant_id.startswith(prefix):
            return kind  # type: ignore[return-value]
    return None


@dataclass(frozen=True, slots=True)
class Grant:
    grant_id: str
    kind: GrantKind
    subject: DataSubject
    granted_by: GrantedBy
    grantor: str | None
    """Keyed hash of the operator or agent who gave it; None when the subject gave it."""
    delegation: str | None
    """The delegation an agent gave it under; it ends when that delegation ends."""
    requester_client: str | None
    """A consent grant's requesting client (or the department's system client)."""
    requester_province: str | None
    """A department's province; None for a client named alone."""
    agent: DataSubject | None
    """A delegation's agent (a person, by keyed hash only)."""
    services: tuple[str, ...]
    operations: tuple[str, ...] | None
    """None: every operation of the services (and their cases)."""
    purpose: str | None
    """None for a delegation (the agent acts for any purpose of the named services)."""
    created_at: float
    expires_at: float
    max_uses: int | None
    uses: int
    revoked_at: float | None

    def state(self, now: float) -> Literal["active", "revoked", "expired", "used_up"]:
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used_up"
        return "active"

    @property
    def uses_left(self) -> int | None:
        return None if self.max_uses is None else max(self.max_uses - self.uses, 0)


# --- refusals: each its own stable code ---------------------------------------------------------


class GrantUnknown(GrantRefused):
    code = "client.grant_unknown"
    title = "No such grant"


class GrantExpired(GrantRefused):
    code = "client.grant_expired"
    title = "The grant has expired"


class GrantRevoked(GrantRefused):
    code = "client.grant_revoked"
    title = "The grant was revoked"


class GrantUsedUp(GrantRefused):
    code = "client.grant_used_up"
    title = "The grant has no uses left"


class GrantOtherRequester(GrantRefused):
    code = "client.grant_other_requester"
    title = "The grant was given to another requester"


class GrantOtherSubject(GrantRefused):
    code = "client.grant_other_subject"
    title = "The grant is about another data subject"


class GrantOtherService(GrantRefused):
    code = "client.grant_other_service"
    title = "The grant does not cover this service or operation"


class GrantOtherPurpose(GrantRefused):
    code = "client.grant_other_purpose"
    title = "The grant was given for another purpose"


class GrantDelegationEnded(GrantRefused):
    code = "client.grant_delegation_ended"
    title = "The grant was given by an agent whose delegation has ended"


class NotYourEnterprise(Forbidden):
    """An operator may grant only for the enterprise it signed in for."""

    code = "client.not_your_enterprise"
    title = "An operator grants only for its own enterprise"


class NotGrantHolder(Forbidden):
    """Only the subject (or its enterprise's operators) may list or revoke its grants."""

    code = "client.not_grant_holder"
    title = "Only the holder manages this grant"


REFUSALS: Final = (
    GrantUnknown,
    GrantExpired,
    GrantRevoked,
    GrantUsedUp,
    GrantOtherRequester,
    GrantOtherSubject,
    GrantOtherService,
    GrantOtherPurpose,
    GrantDelegationEnded,
)


def normal_purpose(purpose: str) -> str:
    """Purposes compare after trimming and folding runs of white space: the text a person
    typed and the text a portal sends differ in nothing else that matters."""
    return " ".join(purpose.split())


def check(grant: Grant | None, ask: GrantAsk, now: float, delegation: Grant | None) -> None:
    """Raise the refusal that applies, first match wins, or return when ``grant`` covers
    ``ask``. ``delegation`` is the delegation an agent gave ``grant`` under (None when the
    subject gave it, or when that delegation no longer exists). The use count is checked here
    for the message but spent by the store atomically.

    The binding comes first: a requester presenting someone else's grant id learns only that
    it is not theirs, never whether it was revoked, expired or used."""
    if grant is None or grant.kind != kind_of(ask.grant_id):
        raise GrantUnknown("No grant with this id exists.")
    requester = ask.requester
    if grant.kind == "delegation":
        if requester.person is None or requester.person != grant.agent:
            raise GrantOtherRequester("The delegation names another person as agent.")
    elif requester.client_id != grant.requester_client or (
        grant.requester_province is not None and requester.province != grant.requester_province
    ):
        raise GrantOtherRequester("The grant was given to another requester.")
    if grant.subject != ask.subject:
        raise GrantOtherSubject("The grant is about someone else's data.")
    # Before the grant's own state: revoking a delegation revokes what the agent gave under it,
    # and such a grant never outlives it, but the reason the caller needs is the delegation's.
    if grant.granted_by == "agent" and (delegation is None or delegation.state(now) != "active"):
        raise GrantDelegationEnded("The agent who gave this grant is no longer delegated.")
    if grant.revoked_at is not None:
        raise GrantRevoked("The subject revoked this grant.")
    if now >= grant.expires_at:
        raise GrantExpired("The grant has expired.")
    if ask.service not in grant.services:
        raise GrantOtherService("The grant does not cover this service.")
    if grant.operations is not None and (
        ask.operation is None or ask.operation not in grant.operations
    ):
        raise GrantOtherService("The grant does not cover this operation.")
    if grant.purpose is not None and normal_purpose(ask.purpose) != grant.purpose:
        raise GrantOtherPurpose("The grant was given for another purpose.")
    if grant.max_uses is not None and grant.uses >= grant.max_uses:
        raise GrantUsedUp("The grant has no uses left.")
