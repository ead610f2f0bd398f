"""The consent book on both stores: one suite, run on SQLite and on PostgreSQL.

Every refusal has its own code and leaves a ``consent_refused`` record naming the subject; a
counted grant is never over-spent however many uses race for it (on one store, and on two
stores sharing one database as two gateway instances do).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.audit.record import EventType
from gateway.consent.book import ConsentService, Giver, GrantRequest, MemoryConsentAudit
from gateway.consent.contract import (
    ConsentStoreUnavailable,
    DataSubject,
    GrantAsk,
    GrantRefused,
    GrantUse,
    Requester,
)
from gateway.consent.model import REFUSALS
from gateway.consent.store import ConsentStore
from gateway.errors import NotFound, ValidationFailed
from gateway.stores.postgres_consent import PostgresConsentStore
from gateway.stores.sqlite_consent import SqliteConsentStore
from tests.stores.backends import PG_DSN, drop_schema, postgres_or_skip, run_private

ALICE = DataSubject("person", "pk-alice")
BOB = DataSubject("person", "pk-bob")
ACME = DataSubject("enterprise", "ek-acme")
BANK = Requester("bank-credit-61", province="61")
SERVICE = "enterprise-credit"
PURPOSE = "贷款审批"


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Opened:
    name: str
    new_store: Callable[[], ConsentStore]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opened]:
    if request.param == "sqlite":
        yield Opened("sqlite", lambda: SqliteConsentStore(tmp_path / "consent.db"))
        return
    postgres_or_skip()
    schema = f"t_consent_{secrets.token_hex(6)}"
    try:
        yield Opened("postgres", lambda: PostgresConsentStore(PG_DSN, schema=schema, max_size=8))
    finally:
        run_private(drop_schema(schema))


@pytest.fixture
async def store(opened: Opened) -> AsyncIterator[ConsentStore]:
    one = opened.new_store()
    await one.open()
    try:
        yield one
    finally:
        await one.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def audit() -> MemoryConsentAudit:
    return MemoryConsentAudit()


@pytest.fixture
def book(store: ConsentStore, audit: MemoryConsentAudit, clock: Clock) -> ConsentService:
    return ConsentService(store, audit, clock=clock)


def consent(clock: Clock, **changes: object) -> GrantRequest:
    base = GrantRequest(
        kind="consent",
        services=(SERVICE,),
        operations=("nonpublic-summary",),
        purpose=PURPOSE,
        requester_client=BANK.client_id,
        requester_province="61",
        expires_at=clock.now + 3600,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def ask(grant_id: str, **changes: object) -> GrantAsk:
    base = GrantAsk(
        grant_id=grant_id,
        subject=ACME,
        requester=BANK,
        service=SERVICE,
        operation="nonpublic-summary",
        purpose=PURPOSE,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


OPERATOR = Giver(ACME, "operator", grantor="pw-operator", client="portal-qinghai")


async def test_a_grant_opens_exactly_what_it_names(
    book: ConsentService, audit: MemoryConsentAudit, clock: Clock
) -> None:
    grant = await book.give(OPERATOR, consent(clock, max_uses=2))
    assert grant.grant_id.startswith("cg_")
    assert len(grant.grant_id) >= 32
    used = await book.use(ask(grant.grant_id, purpose="  贷款审批 "))
    assert (used.grant_id, used.kind, used.uses_left) == (grant.grant_id, "consent", 1)

    granted, use = audit.events
    assert granted.type == EventType.CONSENT_GRANTED
    assert granted.actor == "pw-operator"
    assert granted.extra["subjects"] == [ACME.key]
    assert granted.extra["grant"] == grant.grant_id
    assert use.type == EventType.CONSENT_USED
    assert (use.client, use.service, use.operation, use.outcome) == (
        BANK.client_id,
        SERVICE,
        "nonpublic-summary",
        "ok",
    )
    assert use.extra == {"subjects": [ACME.key], "grant": grant.grant_id, "uses_left": 1}


async def test_every_refusal_has_its_code_and_a_record(
    book: ConsentService, audit: MemoryConsentAudit, clock: Clock
) -> None:
    grant = await book.give(OPERATOR, consent(clock))
    gid = grant.grant_id
    cases = [
        (ask("cg_" + secrets.token_urlsafe(24)), "client.grant_unknown"),
        (ask("dg_" + gid[3:]), "client.grant_unknown"),  # a consent id is no delegation
        (ask(gid, subject=BOB), "client.grant_other_subject"),
        (
            ask(gid, requester=Requester("other-portal", province="61")),
            "client.grant_other_requester",
        ),
        (
            ask(gid, requester=Requester(BANK.client_id, province="63")),
            "client.grant_other_requester",
        ),
        (ask(gid, service="pension-transfer"), "client.grant_other_service"),
        (ask(gid, operation="raw-detail"), "client.grant_other_service"),
        (ask(gid, operation=None), "client.grant_other_service"),  # a case: the whole service
        (ask(gid, purpose="营销"), "client.grant_other_purpose"),
    ]
    for bad, code in cases:
        with pytest.raises(GrantRefused) as refused:
            await book.use(bad)
        assert refused.value.code == code, bad
        assert refused.value.status == 403
        last = audit.events[-1]
        assert (last.type, last.outcome, last.error_code) == (
            EventType.CONSENT_REFUSED,
            "denied",
            code,
        )
        assert last.extra["subjects"] == [bad.subject.key]

    clock.now = grant.expires_at
    with pytest.raises(GrantRefused) as refused:
        await book.use(ask(gid))
    assert refused.value.code == "client.grant_expired"
    clock.now = grant.expires_at - 1

    await book.revoke(gid, OPERATOR, ("consent",))
    with pytest.raises(GrantRefused) as refused:
        await book.use(ask(gid))
    assert refused.value.code == "client.grant_revoked"
    # Someone else holding the id learns only that it is not theirs, not that it was revoked.
    with pytest.raises(GrantRefused) as refused:
        await book.use(ask(gid, requester=Requester("other-portal", province="61")))
    assert refused.value.code == "client.grant_other_requester"
    assert {c.code for c in REFUSALS} >= {code for _, code in cases}


async def test_single_use_is_spent_once(book: ConsentService, clock: Clock) -> None:
    grant = await book.give(OPERATOR, consent(clock, max_uses=1))
    assert (await book.use(ask(grant.grant_id))).uses_left == 0
    with pytest.raises(GrantRefused) as refused:
        await book.use(ask(grant.grant_id))
    assert refused.value.code == "client.grant_used_up"


async def test_concurrent_uses_never_overspend(
    opened: Opened, book: ConsentService, clock: Clock
) -> None:
    grant = await book.give(OPERATOR, consent(clock, max_uses=5))
    # A second store on the same database: another gateway instance spending the same grant.
    other = opened.new_store()
    await other.open()
    try:
        second = ConsentService(other, None, clock=clock)
        results = await asyncio.gather(
            *((book if i % 2 else second).use(ask(grant.grant_id)) for i in range(40)),
            return_exceptions=True,
        )
    finally:
        await other.aclose()
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, GrantRefused)]
    assert len(ok) == 5, results
    assert len(refused) == 35, results
    assert {r.code for r in refused} == {"client.grant_used_up"}
    assert sorted(r.uses_left or 0 for r in ok) == [0, 1, 2, 3, 4]
    stored, _ = await book.store.find(grant.grant_id)
    assert stored is not None
    assert stored.uses == 5


async def test_a_use_given_back_can_be_used_once_more(
    book: ConsentService, audit: MemoryConsentAudit, clock: Clock
) -> None:
    grant = await book.give(OPERATOR, consent(clock, max_uses=1))
    asked = ask(grant.grant_id)
    used = await book.use(asked)
    assert used.uses_left == 0
    await book.give_back(asked, used)  # the request was not sent after all
    stored, _ = await book.store.find(grant.grant_id)
    assert stored is not None
    assert stored.uses == 0
    returned = audit.events[-1]
    assert (returned.type, returned.outcome, returned.client, returned.service) == (
        EventType.CONSENT_RETURNED,
        "ok",
        BANK.client_id,
        SERVICE,
    )
    assert returned.extra == {"subjects": [ACME.key], "grant": grant.grant_id, "uses_left": 1}

    # Given back once per use, never below zero: a second give-back changes and records nothing.
    await book.give_back(asked, used)
    assert len(audit.events) == 3
    assert await book.store.give_back(grant.grant_id) is None
    stored, _ = await book.store.find(grant.grant_id)
    assert stored is not None
    assert stored.uses == 0

    assert (await book.use(asked)).uses_left == 0
    with pytest.raises(GrantRefused) as refused:
        await book.use(asked)
    assert refused.value.code == "client.grant_used_up"


async def test_a_grant_without_a_count_has_nothing_to_give_back(
    book: ConsentService, audit: MemoryConsentAudit, clock: Clock
) -> None:
    grant = await book.give(OPERATOR, consent(clock))
    asked = ask(grant.grant_id)
    used = await book.use(asked)
    assert used.uses_left is None
    await book.give_back(asked, used)
    assert [e.type for e in audit.events] == [EventType.CONSENT_GRANTED, EventType.CONSENT_USED]
    # Even asked of the store directly: no count, no change.
    assert await book.store.give_back(grant.grant_id) is None
    assert await book.store.give_back("cg_" + secrets.token_urlsafe(24)) is None
    stored, _ = await book.store.find(grant.grant_id)
    assert stored is not None
    assert (stored.uses, stored.max_uses) == (0, None)


async def test_racing_give_backs_and_uses_never_pass_the_count(
    opened: Opened, book: ConsentService, clock: Clock
) -> None:
    grant = await book.give(OPERATOR, consent(clock, max_uses=3))
    for _ in range(3):
        await book.use(ask(grant.grant_id))
    # A second store on the same database: another gateway instance, giving back and spending.
    other = opened.new_store()
    await other.open()
    try:
        stores = (book.store, other)
        calls = [
            stores[i % 2].give_back(grant.grant_id)
            if i % 3 == 0
            else stores[i % 2].spend(grant.grant_id, clock.now)
            for i in range(60)
        ]
        results = await asyncio.gather(*calls)
    finally:
        await other.aclose()
    given = [r for i, r in enumerate(results) if i % 3 == 0 and r is not None]
    spent = [r for i, r in enumerate(results) if i % 3 != 0 and r is not None]
    assert given, results
    assert len(spent) <= len(given), "a use was spent past the count"
    assert all(0 <= r <= 3 for r in given + spent)
    stored, _ = await book.store.find(grant.grant_id)
    assert stored is not None
    assert stored.uses == 3 - len(given) + len(spent)
    assert 0 <= stored.uses <= 3


async def test_delegations_act_for_the_holder_until_they_end(
    book: ConsentService, clock: Clock
) -> None:
    holder = Giver(ALICE, "subject", client="portal-qinghai")
    delegation = await book.give(
        holder,
        GrantRequest(
            kind="delegation",
            services=("housing-fund-transfer", SERVICE),
            expires_at=clock.now + 86_400,
            agent=BOB,
        ),
    )
    assert delegation.grant_id.startswith("dg_")
    as_agent = Requester("portal-shaanxi", person=BOB)
    base = ask(delegation.grant_id, subject=ALICE, requester=as_agent)
    used = await book.use(replace(base, service="housing-fund-transfer", purpose="任意"))
    assert (used.kind, used.uses_left) == ("delegation", None)
    for bad, code in (
        (replace(base, requester=Requester("portal-shaanxi")), "client.grant_other_requester"),
        (replace(base, requester=Requester("x", person=ALICE)), "client.grant_other_requester"),
        (replace(base, subject=BOB), "client.grant_other_subject"),
        (replace(base, service="pension-transfer"), "client.grant_other_service"),
    ):
        with pytest.raises(GrantRefused) as refused:
            await book.use(bad)
        assert refused.value.code == code

    # The agent grants the bank consent for the holder, under the delegation.
    agent = Giver(ALICE, "agent", grantor="pw-bob", delegation=delegation.grant_id, agent=BOB)
    impostor = replace(agent, agent=DataSubject("person", "pk-carol"))
    with pytest.raises(GrantRefused) as refused:
        await book.give(impostor, consent(clock))
    assert refused.value.code == "client.grant_delegation_ended"
    given = await book.give(
        agent, consent(clock, services=(SERVICE,), operations=None, requester_province=None)
    )
    bank_ask = ask(given.grant_id, subject=ALICE, operation="public-summary")
    assert (await book.use(bank_ask)).kind == "consent"
    # Beyond the delegation's services: refused before anything is written.
    with pytest.raises(GrantRefused) as refused:
        await book.give(agent, consent(clock, services=("pension-transfer",)))
    assert refused.value.code == "client.grant_other_service"

    long = await book.give(agent, consent(clock, expires_at=clock.now + 200_000, operations=None))
    assert long.expires_at == delegation.expires_at, "never past the delegation"

    # The holder revokes the delegation: the agent's own use and its grant stop at once, and
    # the grants the agent gave under it show as revoked too.
    await book.revoke(delegation.grant_id, holder, ("delegation",))
    listed = {g.grant_id: g.state(clock.now) for g in await book.mine(ALICE)}
    assert listed[given.grant_id] == listed[long.grant_id] == "revoked"
    for bad, code in (
        (replace(base, service=SERVICE), "client.grant_revoked"),
        (bank_ask, "client.grant_delegation_ended"),
    ):
        with pytest.raises(GrantRefused) as refused:
            await book.use(bad)
        assert refused.value.code == code
    with pytest.raises(GrantRefused) as refused:
        await book.give(agent, consent(clock))
    assert refused.value.code == "client.grant_delegation_ended"


async def test_holders_list_and_revoke_only_their_own(
    book: ConsentService, audit: MemoryConsentAudit, clock: Clock
) -> None:
    first = await book.give(OPERATOR, consent(clock))
    clock.now += 1
    second = await book.give(OPERATOR, consent(clock, max_uses=3))
    alice = Giver(ALICE, "subject")
    mine = await book.give(
        alice,
        GrantRequest(kind="delegation", services=(SERVICE,), expires_at=clock.now + 60, agent=BOB),
    )
    assert [g.grant_id for g in await book.mine(ACME)] == [second.grant_id, first.grant_id]
    assert [g.grant_id for g in await book.delegated_to(BOB)] == [mine.grant_id]
    assert await book.delegated_to(ALICE) == []

    with pytest.raises(NotFound):
        await book.revoke(first.grant_id, alice, ("consent",))  # not hers
    with pytest.raises(NotFound):
        await book.revoke(mine.grant_id, alice, ("consent",))  # a delegation, not a consent
    revoked = await book.revoke(first.grant_id, OPERATOR, ("consent",))
    assert revoked.revoked_at == clock.now
    assert revoked.state(clock.now) == "revoked"
    again = await book.revoke(first.grant_id, OPERATOR, ("consent",))
    assert again.revoked_at == revoked.revoked_at, "revoking twice changes nothing"
    kinds = [e.type for e in audit.events]
    assert kinds.count(EventType.CONSENT_REVOKED) == 1
    assert kinds.count(EventType.CONSENT_GRANTED) == 3

    with pytest.raises(ValidationFailed):
        await book.give(OPERATOR, consent(clock, expires_at=clock.now - 1))
    with pytest.raises(ValidationFailed):
        await book.give(OPERATOR, consent(clock, expires_at=clock.now + 400 * 86_400))


async def test_grants_survive_a_restart(opened: Opened, clock: Clock) -> None:
    first = opened.new_store()
    await first.open()
    try:
        grant = await ConsentService(first, None, clock=clock).give(
            OPERATOR, consent(clock, max_uses=2)
        )
        await ConsentService(first, None, clock=clock).use(ask(grant.grant_id))
    finally:
        await first.aclose()
    again = opened.new_store()
    await again.open()
    try:
        found, delegation = await again.find(grant.grant_id)
    finally:
        await again.aclose()
    assert found == replace(grant, uses=1)
    assert delegation is None


async def test_a_store_that_is_down_fails_closed(opened: Opened, clock: Clock) -> None:
    store = opened.new_store()
    book = ConsentService(store, None, clock=clock)
    with pytest.raises(ConsentStoreUnavailable) as down:
        await book.use(ask("cg_x"))  # never opened
    assert down.value.status == 503
    assert opened.name in down.value.detail
    assert down.value.code == "gateway.consent_store_unavailable"
    # Giving back with the store down does not raise (the use stays spent: the safe side);
    # the caller's own error is what its client gets.
    await book.give_back(ask("cg_x"), GrantUse("cg_x", "consent", 0))


@pytest.mark.postgres
async def test_postgres_unreachable_is_named() -> None:
    store = PostgresConsentStore("postgresql://postgres@127.0.0.1:1/test", schema="t_none")
    with pytest.raises(ConsentStoreUnavailable) as down:
        await store.open()
    assert "postgres" in down.value.detail
    assert "127.0.0.1" not in down.value.detail


async def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    store = SqliteConsentStore(tmp_path / "consent.db")
    await store.open()
    await store.aclose()
    assert stat.S_IMODE(os.stat(tmp_path / "consent.db").st_mode) == 0o600
