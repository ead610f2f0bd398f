"""Whose licence: the holder is the caller, or a grant of the holder's covers the caller.

A licence is used only for its holder and the matter at hand (第十四条). The caller and the
licence's holder are both named by subject keys (gateway/identity/subject_keys.py): a signed-in
person carries its person key (``Principal.person``), an enterprise's operator its enterprise's
key (``Principal.enterprise``), and the holder's key is computed from the identifier its issuer
sealed. ``is_holder`` compares them; no ID number is compared or kept.

When the caller is someone else (a relative applying, an institution, a department), the
holder's consent grant (授权用证) or delegation (委托用证) must cover the request: the grant the
caller presents (the grant the case recorded, ``authorisation_ref``) is *used* through the
``ConsentBook`` (gateway/consent/contract.py), which checks subject, requester, service,
purpose, expiry, revocation and use count. Without a grant, or without a consent book, the
request is refused: fail closed. A counted use of that grant is given back (``give_back``) when
the application it was spent for is then not taken in, unless the issuer may have been asked and
failed to answer (gateway/licences/materials.py).

Must not: import aiohttp; keep identifiers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway.consent.contract import (
    ConsentBook,
    DataSubject,
    GrantAsk,
    GrantUse,
    Requester,
    give_back_each,
)
from gateway.consent.subjects import requester_person
from gateway.licences.errors import LicenceNotSubjects
from gateway.principal import Principal

Spent = tuple[GrantAsk, GrantUse]
"""A counted grant use and the ask it was spent for."""


class HolderCheck:
    def __init__(self, consent: Callable[[], ConsentBook | None] = lambda: None) -> None:
        self._consent = consent

    @staticmethod
    def is_holder(principal: Principal, holder: DataSubject) -> bool | None:
        """True / False when it can be told, None when it cannot (a token that names no
        subject: a development token, a machine client; the data-subject rule decides)."""
        if holder.kind == "enterprise":
            if principal.enterprise is None:
                return None if principal.person is None else False
            return principal.enterprise == holder.key
        if principal.person is None:
            return None
        if principal.level == "LP":
            return False  # an operator acting for an enterprise is not the person
        return principal.person == holder.key

    async def authorise(
        self,
        principal: Principal,
        holder: DataSubject,
        *,
        grant_id: str | None,
        service: str,
        operation: str | None,
        purpose: str,
    ) -> Spent | None:
        """None when the caller is the holder (or it cannot be told here); the ask and the
        grant's use otherwise (the ask kept for ``give_back``); LicenceNotSubjects when nothing
        covers the caller."""
        if self.is_holder(principal, holder) is not False:
            return None
        book = self._consent()
        if grant_id is None or book is None:
            raise LicenceNotSubjects(
                "The licence is not the caller's: it is used for someone else only under that"
                " person's consent grant (授权用证) or delegation (委托用证)."
            )
        ask = GrantAsk(
            grant_id=grant_id,
            subject=holder,
            requester=Requester(client_id=principal.client_id, person=requester_person(principal)),
            service=service,
            operation=operation,
            purpose=purpose,
        )
        return ask, await book.use(ask)

    async def give_back(self, spent: Iterable[Spent]) -> None:
        """Give each counted use back to the book (``give_back_each``: never raises). A use was
        spent only through a book, so without one there is nothing to give back."""
        book = self._consent()
        if book is not None:
            await give_back_each(book, spent)
