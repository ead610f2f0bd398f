"""The consent book: grants and delegations given, used, refused and revoked, each on the record.

``ConsentService`` implements the ConsentBook protocol (``use``, ``give_back``) for the
data-subject rule and the operations behind ``/api/v1/me/consents`` and
``/api/v1/me/delegations`` (give, list, revoke). It decides with gateway/consent/model.py
``check``, keeps grants in a ConsentStore, and writes every step to the audit chain:

    consent_granted   required: no record, no grant
    consent_revoked   required: no record, no revocation
    consent_used      buffered, like the routed call's own records
    consent_refused   buffered, with the refusal's code in ``error_code``
    consent_returned  buffered: a counted use given back, its request not sent after all

Each record names the subject only in ``extra.subjects`` (its key), so the subject's access log
finds it; ``extra.grant`` is the grant id. The store down makes ``use`` raise
ConsentStoreUnavailable (503, the store named): requests that need a grant fail closed. The
store down when a use is given back is logged and swallowed: the use stays spent.

Must not: import aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from gateway.audit.record import AuditEvent, EventType
from gateway.audit.recorder import EventRecorder, MemoryRecorder, WriterRecorder
from gateway.consent.contract import (
    ConsentStoreUnavailable,
    DataSubject,
    GrantAsk,
    GrantKind,
    GrantRefused,
    GrantUse,
)
from gateway.consent.model import (
    MAX_DAYS,
    Grant,
    GrantDelegationEnded,
    GrantedBy,
    GrantOtherService,
    GrantUsedUp,
    check,
    new_grant_id,
    normal_purpose,
)
from gateway.consent.store import ConsentStore
from gateway.errors import NotFound, ValidationFailed

_DAY: Final = 86_400.0
log = structlog.get_logger("tongban.consent")


ConsentAudit = EventRecorder
WriterConsentAudit = WriterRecorder
MemoryConsentAudit = MemoryRecorder


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """What the holder asks for, already validated in shape by the HTTP layer."""

    kind: GrantKind
    services: tuple[str, ...]
    expires_at: float
    operations: tuple[str, ...] | None = None
    purpose: str | None = None
    requester_client: str | None = None
    requester_province: str | None = None
    agent: DataSubject | None = None
    max_uses: int | None = None


@dataclass(frozen=True, slots=True)
class Giver:
    """Who gives a grant: the subject, an operator for it, or an agent under a delegation."""

    subject: DataSubject
    granted_by: GrantedBy
    grantor: str | None = None
    delegation: str | None = None
    agent: DataSubject | None = None
    """The signed-in agent, when ``granted_by`` is 'agent'."""
    client: str | None = None
    """The client the holder used (for the audit record)."""
    request_id: str | None = None


class ConsentService:
    """The ConsentBook (``use``) and the holder's operations on its grants."""

    def __init__(
        self,
        store: ConsentStore,
        audit: ConsentAudit | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._audit = audit
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    # --- the ConsentBook --------------------------------------------------------------------

    async def use(self, ask: GrantAsk) -> GrantUse:
        now = self._clock()
        try:
            grant, delegation = await self.store.find(ask.grant_id)
            check(grant, ask, now, delegation)
            assert grant is not None
            left = None
            if grant.max_uses is not None:
                limit = grant.max_uses
                spent = await self.store.spend(grant.grant_id, now)
                if spent is None:  # spent, revoked or expired since it was read
                    grant, delegation = await self.store.find(ask.grant_id)
                    check(grant, ask, self._clock(), delegation)
                    raise GrantUsedUp("The grant has no uses left.")
                left = limit - spent
        except GrantRefused as refusal:
            await self._record(
                EventType.CONSENT_REFUSED, ask, outcome="denied", error_code=refusal.code
            )
            raise
        await self._record(EventType.CONSENT_USED, ask, outcome="ok", uses_left=left)
        return GrantUse(grant.grant_id, grant.kind, left)

    async def give_back(self, ask: GrantAsk, use: GrantUse) -> None:
        if use.uses_left is None:
            return  # no count, nothing was spent
        try:
            left = await self.store.give_back(use.grant_id)
        except ConsentStoreUnavailable as exc:
            # The use stays spent: the safe side. Codes only, never the subject.
            log.warning("consent_use_not_given_back", code=exc.code, service=ask.service)
            return
        if left is None:
            return  # nothing was spent (given back already): nothing to record
        await self._record(EventType.CONSENT_RETURNED, ask, outcome="ok", uses_left=left)

    async def _record(
        self,
        kind: EventType,
        ask: GrantAsk,
        *,
        outcome: str,
        error_code: str | None = None,
        uses_left: int | None = None,
    ) -> None:
        if self._audit is None:
            return
        extra: dict[str, Any] = {"subjects": [ask.subject.key], "grant": ask.grant_id[:64]}
        if uses_left is not None:
            extra["uses_left"] = uses_left
        if ask.requester.person is not None:
            extra["agent"] = True
        await self._audit.record(
            AuditEvent(
                type=kind,
                client=ask.requester.client_id,
                receiving_province=ask.requester.province,
                service=ask.service,
                operation=ask.operation,
                purpose=ask.purpose[:200],
                outcome=outcome,
                error_code=error_code,
                extra=extra,
            ),
            required=False,
        )

    # --- the holder's operations --------------------------------------------------------------

    async def give(self, giver: Giver, request: GrantRequest) -> Grant:
        """Record a new grant or delegation (audit first: no record, no grant)."""
        now = self._clock()
        if request.expires_at <= now:
            raise ValidationFailed(
                "The grant would already have expired.",
                errors=[{"path": "/expires_at", "message": "must be in the future"}],
            )
        if request.expires_at > now + MAX_DAYS * _DAY:
            raise ValidationFailed(
                "A grant lasts at most a year.",
                errors=[{"path": "/expires_at", "message": f"at most {MAX_DAYS} days ahead"}],
            )
        expires_at = request.expires_at
        if giver.granted_by == "agent":
            # Never past the delegation it is given under.
            expires_at = min(expires_at, await self._check_delegation(giver, request, now))
        grant = Grant(
            grant_id=new_grant_id(request.kind),
            kind=request.kind,
            subject=giver.subject,
            granted_by=giver.granted_by,
            grantor=giver.grantor,
            delegation=giver.delegation,
            requester_client=request.requester_client,
            requester_province=request.requester_province,
            agent=request.agent,
            services=request.services,
            operations=request.operations,
            purpose=normal_purpose(request.purpose) if request.purpose is not None else None,
            created_at=now,
            expires_at=expires_at,
            max_uses=request.max_uses,
            uses=0,
            revoked_at=None,
        )
        await self._holder_record(EventType.CONSENT_GRANTED, grant, giver)
        await self.store.insert(grant)
        return grant

    async def _check_delegation(self, giver: Giver, request: GrantRequest, now: float) -> float:
        """An agent gives a consent grant only under a live delegation of the same subject
        covering every service it names; the delegation's expiry."""
        delegation, _ = await self.store.find(giver.delegation or "")
        if (
            delegation is None
            or delegation.kind != "delegation"
            or delegation.subject != giver.subject
            or delegation.agent is None
            or delegation.agent != giver.agent
            or delegation.state(now) != "active"
        ):
            raise GrantDelegationEnded("The delegation you act under has ended.")
        if request.kind != "consent" or not set(request.services) <= set(delegation.services):
            raise GrantOtherService("The delegation does not cover what this grant names.")
        return delegation.expires_at

    async def mine(self, subject: DataSubject) -> list[Grant]:
        return await self.store.of_subject(subject)

    async def delegated_to(self, agent: DataSubject) -> list[Grant]:
        return await self.store.of_agent(agent)

    async def revoke(self, grant_id: str, holder: Giver, kinds: Sequence[GrantKind]) -> Grant:
        """Revoke one of the holder's grants (audit first); revoking twice changes nothing."""
        grant, _ = await self.store.find(grant_id)
        if grant is None or grant.kind not in kinds:
            raise NotFound("No such grant.")
        if grant.subject != holder.subject:
            # The same answer as for an unknown id: a grant id proves nothing about its holder.
            raise NotFound("No such grant.")
        if grant.revoked_at is not None:
            return grant
        await self._holder_record(EventType.CONSENT_REVOKED, grant, holder)
        revoked = await self.store.revoke(grant_id, self._clock())
        if revoked is None:
            raise NotFound("No such grant.")
        return revoked

    async def _holder_record(self, kind: EventType, grant: Grant, giver: Giver) -> None:
        if self._audit is None:
            return
        extra: dict[str, Any] = {
            "subjects": [grant.subject.key],
            "grant": grant.grant_id,
            "kind": grant.kind,
            "granted_by": giver.granted_by,
            "services": list(grant.services)[:20],
            "expires_at": int(grant.expires_at),
        }
        if grant.requester_client is not None:
            extra["requester"] = grant.requester_client
        if grant.max_uses is not None:
            extra["max_uses"] = grant.max_uses
        if giver.delegation is not None:
            extra["delegation"] = giver.delegation
        await self._audit.record(
            AuditEvent(
                type=kind,
                request_id=giver.request_id,
                actor=giver.grantor,
                client=giver.client,
                receiving_province=grant.requester_province,
                purpose=grant.purpose[:200] if grant.purpose else None,
                outcome="ok",
                extra=extra,
            ),
            required=True,
        )
