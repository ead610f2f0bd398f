"""Whose licence: the holder is the caller, or a grant of the holder's covers the caller.

A licence is used only for its holder and the matter at hand (第十四条). The gateway knows the
signed-in person by a keyed person key (gateway/identity/person_key.py) and the licence's
holder by the keyed link hash of the identifier its issuer sealed: the two meet in the local id
of a natural person, ``person:<link key>``, so ``is_holder`` tells whether the caller is the
holder without storing or comparing an ID number.

When the caller is someone else (a relative applying, an institution, a department), the
holder's consent grant (授权用证) or delegation (委托用证) must cover the request: the grant the
caller presents is *used* through the ``ConsentBook`` (gateway/consent/contract.py), which checks
subject, requester, service, purpose, expiry, revocation and use count. Without a grant, or
without a consent book, the request is refused: fail closed.

Must not: import aiohttp; keep identifiers.
"""

from __future__ import annotations

from gateway.consent.contract import ConsentBook, DataSubject, GrantAsk, GrantUse, Requester
from gateway.identity.citizen import natural_person_id
from gateway.identity.person_key import PersonKeys
from gateway.licences.errors import LicenceNotSubjects
from gateway.principal import Principal


class HolderCheck:
    def __init__(self, person_keys: PersonKeys | None, consent: ConsentBook | None) -> None:
        self._keys = person_keys
        self._consent = consent

    def is_holder(self, principal: Principal, holder: DataSubject) -> bool | None:
        """True / False when it can be told, None when it cannot (no person key in the token,
        or an enterprise holder: the enterprise's own rule decides)."""
        if self._keys is None or principal.person is None or holder.kind != "person":
            return None
        expected = self._keys.person_key(natural_person_id(holder.key))
        return principal.person == expected

    async def authorise(
        self,
        principal: Principal,
        holder: DataSubject,
        *,
        grant_id: str | None,
        service: str,
        operation: str | None,
        purpose: str,
    ) -> GrantUse | None:
        """None when the caller is the holder (or it cannot be told here); the grant used
        otherwise; LicenceNotSubjects when nothing covers the caller."""
        if self.is_holder(principal, holder) is not False:
            return None
        if grant_id is None or self._consent is None:
            raise LicenceNotSubjects(
                "The licence is not the caller's: it is used for someone else only under that"
                " person's consent grant (授权用证) or delegation (委托用证)."
            )
        return await self._consent.use(
            GrantAsk(
                grant_id=grant_id,
                subject=holder,
                requester=Requester(client_id=principal.client_id),
                service=service,
                operation=operation,
                purpose=purpose,
            )
        )
