"""A consent book for tests: grants held in a dict, every ask recorded (the real one is a store).

Implements gateway.consent.contract.ConsentBook exactly as the rule expects it to behave: it
checks subject, requester, service, operation and purpose, counts uses (and takes a counted use
back), and raises GrantRefused (or ConsentStoreUnavailable when told it is down).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.consent.contract import (
    ConsentStoreUnavailable,
    DataSubject,
    GrantAsk,
    GrantRefused,
    GrantUse,
)


@dataclass
class TestGrant:
    __test__ = False

    subject: DataSubject
    client_id: str
    service: str
    operation: str | None = None
    """None: any operation of the service, and its cases."""
    purpose: str | None = None
    uses: int | None = None
    person: DataSubject | None = None
    """A delegation's agent: only this person may present it."""


@dataclass
class MemoryConsentBook:
    grants: dict[str, TestGrant] = field(default_factory=dict)
    asks: list[GrantAsk] = field(default_factory=list)
    given_back: list[GrantAsk] = field(default_factory=list)
    down: bool = False

    __test__ = False

    async def use(self, ask: GrantAsk) -> GrantUse:
        self.asks.append(ask)
        if self.down:
            raise ConsentStoreUnavailable("The consent store (test book) is down.")
        grant = self.grants.get(ask.grant_id)
        if grant is None:
            raise GrantRefused("No such grant.")
        if grant.subject != ask.subject:
            raise GrantRefused("The grant is another subject's.")
        if grant.client_id != ask.requester.client_id:
            raise GrantRefused("The grant names another requester.")
        if grant.person is not None and grant.person != ask.requester.person:
            raise GrantRefused("The delegation names another agent.")
        if grant.service != ask.service or grant.operation not in (None, ask.operation):
            raise GrantRefused("The grant is for another service.")
        if grant.purpose is not None and grant.purpose != ask.purpose:
            raise GrantRefused("The grant is for another purpose.")
        if grant.uses is not None:
            if grant.uses <= 0:
                raise GrantRefused("The grant is used up.")
            grant.uses -= 1
        return GrantUse(ask.grant_id, "delegation" if grant.person else "consent", grant.uses)

    async def give_back(self, ask: GrantAsk, use: GrantUse) -> None:
        self.given_back.append(ask)
        grant = self.grants.get(use.grant_id)
        if self.down or grant is None or use.uses_left is None or grant.uses is None:
            return
        grant.uses += 1
