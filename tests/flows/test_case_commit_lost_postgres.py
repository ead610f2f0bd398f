"""A case store's COMMIT whose answer PostgreSQL really lost: CommitUnknown, the uses kept.

Between the case store and PostgreSQL sits a relay on 127.0.0.1 (tests/stores/pg_relay.py)
that loses the answer to the COMMIT of the transaction writing a new case: either it forwards
the COMMIT, lets the server commit and drops the connection before the answer comes back, or
it drops the connection before the COMMIT reaches the server (which then rolls back). The store
cannot tell the two apart and says so (``CommitUnknown``); a later read shows which it was.

Through the gateway (the demo, its case store on PostgreSQL through the relay): an application
under a single-use grant whose commit answer is lost is answered 503 and keeps its use (the
case may exist), with no ``consent_returned`` on the chain. When the commit landed, the retry
with the same key finds the case and spends nothing; when it did not, the case does not exist
and the use stays spent all the same: from the gateway's side the two are the same failure.
"""

from __future__ import annotations

import asyncio
import copy
import io
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from yarl import URL

from gateway.audit.record import EventType
from gateway.cases.store import CommitUnknown
from gateway.demo.cases import S12_CASE
from gateway.demo.residents import HAN_XUEMEI
from gateway.http.cases import CASES
from gateway.stores.postgres_cases import PostgresCaseStore
from tests.flows.conftest import (
    CONFIG_DIR,
    Journey,
    audit_verify,
    chain_records,
    consent_trail,
    demo_journey,
    grant_uses,
)
from tests.flows.test_case_grant_given_back import bearer, single_use_grant
from tests.stores.backends import PG_DSN, drop_schema, postgres_or_skip, run_private
from tests.stores.pg_relay import CommitLosingRelay, Moment, commit_losing_relay
from tests.unit.cases.test_store_contract import create, new_case

pytestmark = pytest.mark.postgres


@pytest.fixture
def schema() -> Iterator[str]:
    postgres_or_skip()
    name = f"t_lost_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        run_private(drop_schema(name))


@pytest.fixture
async def relay() -> AsyncIterator[CommitLosingRelay]:
    server = URL(PG_DSN)
    assert server.host is not None
    async with commit_losing_relay(server.host, server.port or 5432) as opened:
        yield opened


def through(relay: CommitLosingRelay) -> str:
    server = URL(PG_DSN)
    return relay.dsn(server.user or "postgres", server.path.lstrip("/"))


# --- the store ---------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["after", "before"])
async def test_a_commit_whose_answer_is_lost_is_commit_unknown_and_a_read_tells(
    relay: CommitLosingRelay, schema: str, moment: Moment
) -> None:
    store = PostgresCaseStore(through(relay), schema=schema, max_size=2)
    direct = PostgresCaseStore(PG_DSN, schema=schema, max_size=1)
    await store.open()
    await direct.open()
    try:
        case = new_case("key-lost-0001")
        relay.arm(moment)
        with pytest.raises(CommitUnknown):
            await create(store, case)
        assert relay.outcome is not None
        lost = await relay.outcome
        assert lost.committed is (moment == "after")

        # A later read, on a connection of its own, shows whether the case was taken in.
        found = await direct.find(case.owner, case.idempotency_key)
        if lost.committed:
            assert found is not None
            assert found.case_id == case.case_id
        else:
            assert found is None

        # The store goes on through the relay (the lost connection left its pool), and the
        # retry with the same key makes the case once.
        again = await create(store, new_case("key-lost-0001"))
        assert again.created is not lost.committed
        assert again.case.case_id == (case.case_id if lost.committed else again.case.case_id)
        assert (await direct.find(case.owner, case.idempotency_key)) is not None
    finally:
        await store.aclose()
        await direct.aclose()


# --- through the gateway -----------------------------------------------------------------------


@pytest.fixture
async def journey(
    tmp_path: Path,
    log_stream: io.BytesIO,
    monkeypatch: pytest.MonkeyPatch,
    relay: CommitLosingRelay,
    schema: str,
) -> AsyncIterator[Journey]:
    """The demo with its case store on PostgreSQL (a schema of its own) through the relay."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    path = config / "gateway.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["cases"]["store"] = {"backend": "postgres", "dsn": through(relay), "schema": schema}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    async with demo_journey(tmp_path, monkeypatch, config_dir=config) as journey:
        yield journey
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


async def apply(journey: Journey, grant: str, key: str) -> tuple[int, dict[str, Any], str]:
    """韩雪梅, at the Shaanxi portal, applies for 马文华's newborn under his grant (S12)."""
    response = await journey.client.post(
        "/api/v1/cases",
        json={**copy.deepcopy(S12_CASE[3]), "consent": grant},
        headers={**bearer(journey, "demo-han", HAN_XUEMEI.id_number), "Idempotency-Key": key},
    )
    body = await response.json(content_type=None)
    return response.status, body, response.headers.get("Idempotent-Replayed", "")


@pytest.mark.parametrize("moment", ["after", "before"])
async def test_an_application_whose_commit_answer_is_lost_keeps_its_use(
    journey: Journey, relay: CommitLosingRelay, schema: str, moment: Moment
) -> None:
    grant = await single_use_grant(journey)
    relay.arm(moment)
    status, problem, _ = await apply(journey, grant, "s12-lost-0001")
    assert (status, problem["code"]) == (503, "gateway.case_store_unavailable"), problem
    assert relay.outcome is not None
    lost = await relay.outcome
    assert lost.committed is (moment == "after")
    assert await grant_uses(journey, grant) == 1, "the case may exist: the use stays spent"
    assert [t for t, _ in await consent_trail(journey, grant)] == [
        EventType.CONSENT_GRANTED,
        EventType.CONSENT_USED,
    ]
    intake = [r for r in await chain_records(journey) if r.event.type == EventType.CASE_TRANSITION]
    assert len(intake) == 1, "the intake record, written before the case store's commit"

    # A later read tells whether the case was in fact taken in (the intake record names it).
    case_id = str(intake[0].event.case_id)
    found = await journey.client.app[CASES].store.get(case_id)
    assert (found is not None) is lost.committed
    status, answer, replayed = await apply(journey, grant, "s12-lost-0001")
    if lost.committed:
        # It was: the retry with the same key finds that case and spends nothing.
        assert (status, replayed, answer.get("case_id")) == (202, "true", case_id), answer
    else:
        # It was not, and the gateway could not know: the use stays spent, and the retry
        # needs another one from the grantor.
        assert (status, answer.get("code")) == (403, "client.grant_used_up"), answer
    assert await grant_uses(journey, grant) == 1
