"""The seam between the data-subject rule and the grants that open someone else's data.

The rule finds whose data a request touches (the *data subject*, declared per operation in its
service file). When that is the principal, nothing more is asked. When it is not, the caller must
present a grant, and the rule asks a :class:`ConsentBook` to *use* it: the book alone decides
whether a consent grant (授权用证: the subject lets a named requester reach named services for a
purpose until an expiry) or a delegation (委托用证: the subject names a person as agent) covers
this request, and counts the use. The rule then records the grant's id in the call's audit record
and in the identity assertion the handling province receives. A counted use whose request is
then not sent (refused for another subject, or failed before it reached the back-end) is given
back (``give_back``): a single-use grant is spent only by a request that may have been handled.

Nothing here holds an ID number or a credit code in clear: a subject is named by a keyed hash
that is the same in every province and at every portal (用而不存).

Must not: import aiohttp or a store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from gateway.errors import Forbidden, InternalError
from gateway.frozen import made_in_one_step

log = structlog.get_logger("tongban.consent")

SubjectKind = Literal["person", "enterprise"]
GrantKind = Literal["consent", "delegation"]


@made_in_one_step
@dataclass(frozen=True)
class DataSubject:
    """A person or an enterprise whose data a request touches."""

    kind: SubjectKind
    key: str
    """Keyed hash naming the subject: for a person its person key (the link key of its ID type
    and number made into the gateway's person key, which a signed-in person carries as
    ``Principal.person``), for an enterprise the keyed hash of its credit code or registration
    number (``Principal.enterprise`` of its operators). gateway/consent/subjects.py makes both.
    Never the identifier itself."""


@dataclass(frozen=True, slots=True)
class Requester:
    """Who presents a grant: the client that sent the request, and the person behind it."""

    client_id: str
    person: DataSubject | None = None
    """The signed-in person (an agent presenting a delegation), or None for a machine client."""
    province: str | None = None
    """The province the requesting client belongs to, when registered with one."""


@dataclass(frozen=True, slots=True)
class GrantAsk:
    """One request to use a grant for one data subject."""

    grant_id: str
    subject: DataSubject
    requester: Requester
    service: str
    operation: str | None
    """The operation called, or None for a case (the whole service)."""
    purpose: str


@dataclass(frozen=True, slots=True)
class GrantUse:
    """A grant that covered the request; its id goes into the audit record and the assertion."""

    grant_id: str
    kind: GrantKind
    uses_left: int | None = None
    """Uses left after this one, or None for a grant without a use count."""


class GrantRefused(Forbidden):
    """The presented grant does not cover this request. Subclasses name why, each with its own
    stable code (``client.grant_expired``, ``client.grant_revoked``, ...)."""

    code = "client.grant_refused"
    title = "The grant does not cover this request"


class ConsentStoreUnavailable(InternalError):
    """The consent store cannot be reached: requests that need a grant fail closed."""

    code = "gateway.consent_store_unavailable"
    http_status = 503
    title = "The consent store is unavailable"


class ConsentBook(Protocol):
    """Decides whether a grant covers a request, counts the use, and gives a counted use back
    when the request it was spent for was not sent after all."""

    async def use(self, ask: GrantAsk) -> GrantUse:
        """Check the grant against every field of ``ask`` (subject, requester, service,
        operation, purpose, expiry, revocation, use count) and record one use atomically.

        Raises GrantRefused (or a subclass) when it does not cover the request, and
        ConsentStoreUnavailable when the store cannot answer."""
        ...

    async def give_back(self, ask: GrantAsk, use: GrantUse) -> None:
        """Return the counted use ``use(ask)`` handed out, because the request was then not
        sent (another subject's grant refused it, or the call failed before it reached the
        back-end). Nothing for a grant without a count; never below zero uses. Never raises
        for the store: a use that cannot be given back stays spent (the safe side)."""
        ...


async def give_back_each(book: ConsentBook, spent: Iterable[tuple[GrantAsk, GrantUse]]) -> None:
    """Give ``book`` back each counted use spent for a request that was then not sent. Never
    raises: a use that cannot be given back stays spent (the safe side), and the request's own
    error is what its caller gets. Logs codes only, never a subject or a grant."""
    for ask, use in spent:
        try:
            await book.give_back(ask, use)
        except Exception as exc:  # the book promises not to raise; stay safe if it does
            log.warning(
                "grant_use_not_given_back",
                code=getattr(exc, "code", type(exc).__name__),
                service=ask.service,
            )
