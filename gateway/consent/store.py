"""The ConsentStore protocol: where grants live; implementations in gateway.stores.

A store decides nothing (gateway/consent/model.py ``check`` does): it finds a grant together
with the delegation it was given under, spends one use atomically (and gives one back when
the request it was spent for was not sent), lists a subject's grants and
marks one revoked. Every failure of the database is ConsentStoreUnavailable naming the store;
a driver exception never escapes.

Must not: import aiohttp.
"""

from __future__ import annotations

from typing import Protocol

from gateway.consent.contract import DataSubject
from gateway.consent.model import Grant


class ConsentStore(Protocol):
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def aclose(self) -> None: ...

    async def ping(self) -> None:
        """Raise ConsentStoreUnavailable unless a trivial query succeeds."""

    async def insert(self, grant: Grant) -> None: ...

    async def find(self, grant_id: str) -> tuple[Grant | None, Grant | None]:
        """The grant and, when an agent gave it, the delegation it was given under."""

    async def spend(self, grant_id: str, now: float) -> int | None:
        """One use of a grant with a use count, atomically: the uses after this one, or None
        when nothing was spent (revoked, expired or used up meanwhile). Concurrent callers
        never spend more than the count, on any number of instances."""

    async def give_back(self, grant_id: str) -> int | None:
        """Undo one ``spend`` of a grant with a use count, atomically (one conditional
        UPDATE): the uses left after it, or None when nothing was given back (no count, or no
        use spent). Never below zero uses, whatever else is spent or given back meanwhile; a
        revoked or expired grant gets its use back too and stays refused."""

    async def revoke(self, grant_id: str, now: float) -> Grant | None:
        """Mark the grant revoked (once; a second revocation changes nothing) together with
        every grant an agent gave under it when it is a delegation, and return it, or None when
        there is no such grant."""

    async def of_subject(self, subject: DataSubject, *, limit: int = 200) -> list[Grant]:
        """The subject's grants and delegations, newest first."""

    async def of_agent(self, agent: DataSubject, *, limit: int = 200) -> list[Grant]:
        """The delegations naming this person as agent, newest first."""
