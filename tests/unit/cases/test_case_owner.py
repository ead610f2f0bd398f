"""Cases belong to the person (Principal.owner), not to one portal's pairwise subject: the store
contract for owners (SQLite always, PostgreSQL when reachable), the upgrade of a database written
before owners existed, and who may see a case."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from gateway.cases.model import Case, CaseStatus
from gateway.cases.service import can_see
from gateway.cases.store import CaseStore, IdempotencyConflict
from gateway.principal import Principal
from gateway.stores import postgres_cases, sqlite_cases
from gateway.stores.migrations import migrate_postgres, migrate_sqlite
from gateway.stores.postgres_cases import PostgresCaseStore, numbered
from gateway.stores.sqlite import connect_sqlite
from gateway.stores.sqlite_cases import SqliteCaseStore
from tests.stores.backends import PG_DSN, drop_schema, postgres_or_skip, run_private
from tests.unit.cases.conftest import StoreFactory
from tests.unit.cases.test_store_contract import AT, create, new_case

PERSON = "pk-su-lanxin"
SUB_QH, SUB_SX = "sub-at-qinghai", "sub-at-shaanxi"


# --- the store contract --------------------------------------------------------------------------


async def test_one_person_through_two_portals_is_one_application(store: CaseStore) -> None:
    first = await create(store, new_case("key-owner-0001", subject=SUB_QH, owner=PERSON))
    again = await create(store, new_case("key-owner-0001", subject=SUB_SX, owner=PERSON))
    assert first.created
    assert not again.created
    assert again.case.case_id == first.case.case_id
    assert again.case.subject == SUB_QH, "the case keeps the subject it was filed under"
    assert again.case.owner == PERSON
    with pytest.raises(IdempotencyConflict):
        await create(store, new_case("key-owner-0001", subject=SUB_SX, owner=PERSON, data={"x": 2}))
    other = await create(store, new_case("key-owner-0001", subject="sub-b", owner="pk-other"))
    assert other.created, "keys are scoped to the person"


async def test_find_and_list_go_by_owner(store: CaseStore) -> None:
    at_qh = await create(store, new_case("key-owner-0002", subject=SUB_QH, owner=PERSON))
    at_sx = await create(store, new_case("key-owner-0003", subject=SUB_SX, owner=PERSON))
    old = await create(store, new_case("key-owner-0004", subject=SUB_SX))  # owner = subject
    await create(store, new_case("key-owner-0005", subject="sub-b", owner="pk-other"))
    found = await store.find(PERSON, "key-owner-0002")
    assert found is not None
    assert found.case_id == at_qh.case.case_id
    assert found.owner == PERSON
    assert found.subject == SUB_QH
    assert await store.find(SUB_QH, "key-owner-0002") is None
    assert {s.case_id for s in await store.list_cases(owners=(PERSON,))} == {
        at_qh.case.case_id,
        at_sx.case.case_id,
    }
    mine = await store.list_cases(owners=(PERSON, SUB_SX))
    assert {s.case_id for s in mine} == {at_qh.case.case_id, at_sx.case.case_id, old.case.case_id}
    assert await store.list_cases(owners=()) == []
    assert len(await store.list_cases(subject=SUB_SX)) == 2, "operators still filter by subject"


async def test_a_retry_of_a_case_filed_before_person_keys_is_the_same_case(
    store: CaseStore,
) -> None:
    before = await create(store, new_case("key-owner-0006", subject=SUB_QH))
    assert before.case.owner == SUB_QH
    retried = await create(store, new_case("key-owner-0006", subject=SUB_QH, owner=PERSON))
    assert not retried.created
    assert retried.case.case_id == before.case.case_id


async def test_racing_portals_of_one_person_make_one_case(store_factory: StoreFactory) -> None:
    stores = [store_factory(), store_factory()]
    for s in stores:
        await s.open()
    try:
        results = await asyncio.gather(
            *(
                create(
                    stores[i % 2],
                    new_case("key-owner-race", subject=(SUB_QH, SUB_SX)[i % 2], owner=PERSON),
                )
                for i in range(8)
            )
        )
        assert sum(r.created for r in results) == 1
        assert len({r.case.case_id for r in results}) == 1
    finally:
        for s in stores:
            await s.aclose()


# --- upgrading a database written before owners ----------------------------------------------

_V1_INSERT = (
    "INSERT INTO cases (case_id, service, mode, subject, actor, actor_role, client_id, level,"
    " receiving_province, purpose, authorisation_ref, idempotency_key, body_digest, status,"
    " version, created_at, updated_at, materials, data)"
    " VALUES (?, 'filing', 'online', ?, NULL, NULL, 'portal-63', 'L3', '63', 'test', NULL, ?,"
    " ?, 'received', 1, ?, ?, '[]', NULL)"
)


@dataclass
class Version1Database:
    """A case database at migration 1 (before owners): write to it as that release did, then
    open today's store on it."""

    dialect: str
    where: str
    """The SQLite file, or the PostgreSQL schema."""

    async def write_v1(self, *statements: tuple[str, tuple[object, ...]]) -> None:
        if self.dialect == "sqlite":
            conn = await connect_sqlite(self.where)
            try:
                await migrate_sqlite(conn, "cases", sqlite_cases.CASE_MIGRATIONS[:1])
                for sql, args in statements:
                    await conn.execute(sql, args)
            finally:
                await conn.close()
            return
        pg = await asyncpg.connect(PG_DSN, server_settings={"search_path": self.where})
        try:
            await pg.execute(f"CREATE SCHEMA IF NOT EXISTS {self.where}")
            await migrate_postgres(pg, "cases", postgres_cases.CASE_MIGRATIONS[:1])
            for sql, args in statements:
                await pg.execute(numbered(sql), *args)
        finally:
            await pg.close()

    def store(self) -> CaseStore:
        if self.dialect == "sqlite":
            return SqliteCaseStore(self.where)
        return PostgresCaseStore(PG_DSN, schema=self.where, max_size=2)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def version_1(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Version1Database]:
    if request.param == "sqlite":
        yield Version1Database("sqlite", str(tmp_path / "cases.db"))
        return
    postgres_or_skip()
    schema = f"t_owner_{secrets.token_hex(6)}"
    try:
        yield Version1Database("postgres", schema)
    finally:
        run_private(drop_schema(schema))


async def test_cases_written_before_owners_are_owned_by_their_subject(
    version_1: Version1Database,
) -> None:
    digest = new_case().body_digest
    await version_1.write_v1(
        (_V1_INSERT, ("TB63OLD0001", SUB_QH, "key-owner-0007", digest, AT, AT))
    )
    store = version_1.store()
    await store.open()
    try:
        old = await store.get("TB63OLD0001")
        assert old is not None
        assert old.owner == SUB_QH
        assert old.status == CaseStatus.RECEIVED
        assert [s.case_id for s in await store.list_cases(owners=(PERSON, SUB_QH))] == [
            "TB63OLD0001"
        ]
        # Their retries find them, now by owner as well.
        again = await create(store, new_case("key-owner-0007", subject=SUB_QH))
        assert not again.created
        assert again.case.case_id == "TB63OLD0001"
        found = await store.find(SUB_QH, "key-owner-0007")
        assert found is not None
        assert found.case_id == "TB63OLD0001"
    finally:
        await store.aclose()


# --- who sees a case -------------------------------------------------------------------------


def _case(subject: str, owner: str, actor: str | None = None, client_id: str = "portal-63") -> Case:
    new = new_case("key-owner-0008", subject=subject, owner=owner, client_id=client_id)
    new = type(new)(**{**{f: getattr(new, f) for f in new.__slots__}, "actor": actor})
    return new.as_case(AT, CaseStatus.RECEIVED)


def test_the_person_sees_her_case_through_every_portal_and_nobody_else_does() -> None:
    case = _case(SUB_QH, PERSON)
    assert can_see(Principal(SUB_QH, "L2", "portal-qh", person=PERSON), case)
    assert can_see(Principal(SUB_SX, "L2", "portal-sx", person=PERSON), case)
    assert not can_see(Principal(SUB_QH, "L2", "portal-qh", person="pk-other"), case)
    assert not can_see(Principal(SUB_QH, "L2", "portal-qh"), case), "a subject is not the owner"
    assert not can_see(Principal("sub-b", "L2", "portal-sx", person="pk-other"), case)
    # Someone acting for her sees only what they took in themselves.
    agent = Principal(SUB_SX, "L2", "portal-sx", actor="agent-1", actor_role="agent", person=PERSON)
    assert not can_see(agent, case)
    assert can_see(agent, _case(SUB_QH, PERSON, actor="agent-1"))


def test_a_case_filed_without_a_person_stays_visible_under_its_subject() -> None:
    case = _case(SUB_QH, SUB_QH)  # an old token, or a dev token without a person
    assert can_see(Principal(SUB_QH, "L2", "portal-qh", person=PERSON), case)
    assert not can_see(Principal(SUB_SX, "L2", "portal-sx", person=PERSON), case)
