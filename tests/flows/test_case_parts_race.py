"""Twenty parts of one case answered at the same instant all land, each sent once.

A real loopback back-end holds every submission until all twenty have arrived, then answers them
together, so every worker records its part's result at the same moment. On SQLite one instance
works the whole batch concurrently; on PostgreSQL two instances (two workers, two pools, one
schema) share the parts. Afterwards: every part done, none sent twice, the case closed, and each
transition audited exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from gateway.adapter import Adapter, load_adapter_factory
from gateway.audit.record import EventType
from gateway.breaker import CircuitBreaker
from gateway.cases.audit import MemoryCaseAudit
from gateway.cases.config import DeliverySettings
from gateway.cases.events import NullEventSink
from gateway.cases.lifecycle import iso_now
from gateway.cases.model import (
    CaseStatus,
    MaterialRef,
    Mode,
    NewCase,
    PartPlan,
    PartStatus,
)
from gateway.cases.store import CaseStore, TransitionDraft
from gateway.cases.worker import DeliveryWorker
from gateway.catalog import Catalog
from gateway.pipeline import SystemRuntime, build_stack
from gateway.settings import Settings, load_settings
from gateway.stores.postgres_cases import PostgresCaseStore
from gateway.stores.sqlite_cases import SqliteCaseStore
from tests.stores.backends import PG_DSN, drop_schema, postgres_or_skip, run_private

PARTS = 20


@dataclass
class AtOnceProvince:
    """Stores each submission once per Idempotency-Key and answers nothing until ``expected``
    submissions wait (or ``patience`` runs out), then answers them all together."""

    expected: int
    patience: float = 10.0
    status: int = 201
    """What every submission is answered with (503: all fail at the same instant)."""
    sends: Counter[str] = field(default_factory=Counter)
    waiting: int = 0
    all_arrived: bool = False
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        await request.read()
        self.sends[key] += 1
        self.waiting += 1
        if self.waiting >= self.expected:
            self.all_arrived = True
            self._release.set()
        try:
            async with asyncio.timeout(self.patience):
                await self._release.wait()
        except TimeoutError:
            self._release.set()
        if self.status >= 500:
            return web.json_response({"error": "unavailable"}, status=self.status)
        return web.json_response({"ref": f"F-{key}", "status": "DONE"}, status=self.status)


def write_config(root: Path, port: int) -> Path:
    config = root / "config"
    (config / "services").mkdir(parents=True)
    (config / "gateway.yaml").write_text(f"data_dir: {root / 'data'}\n")
    (config / "systems.yaml").write_text(
        f"""
systems:
  filing-office:
    name: {{zh: 登记系统, en: Filing office}}
    province: "61"
    protocol: rest
    address: http://127.0.0.1:{port}
    operations:
      submit_filing: {{method: POST, path: /api/filings}}
    timeouts: {{connect: 2.0, read: 15.0, attempt: 15.0, deadline: 15.0}}
    retry: {{max_attempts: 1}}
    concurrency_limit: {PARTS * 2}
"""
    )
    (config / "services" / "filing.yaml").write_text(
        """
name: {zh: 多部门联办, en: Many-part filing}
modes: [online, joint]
min_level: L1
subject: caller  # the filing names no one
operations:
  file:
    name: {zh: 提交, en: File}
    kind: submit
    retry: idempotent-with-key
    input_schema: {type: object}
    case: {status_field: status, status_values: {DONE: done}}
"""
    )
    (config / "routes.yaml").write_text(
        """
routes:
  - service: filing
    operation: file
    receiving: ["63"]
    handling: "61"
    system: filing-office
    system_operation: submit_filing
"""
    )
    return config


async def open_catalog(settings: Settings) -> tuple[Catalog, list[Adapter]]:
    """One instance's catalogue on the shipped REST adapter, as the app builds it."""
    adapters: list[Adapter] = []
    runtimes: dict[str, SystemRuntime] = {}
    for sid, system in settings.systems.items():
        adapter = await load_adapter_factory(system.adapter_name).open(
            system.spec(sid, settings.config_dir)
        )
        adapters.append(adapter)
        runtimes[sid] = SystemRuntime(
            sid,
            system,
            adapter,
            CircuitBreaker(sid, failure_threshold=1000, reset_timeout=1.0),
            asyncio.Semaphore(system.concurrency_limit),
        )
    catalog = Catalog.build(
        settings,
        lambda route, operation: build_stack(runtimes[route.system], policy=operation.retry),
    )
    return catalog, adapters


@pytest.fixture
async def province() -> AsyncIterator[tuple[AtOnceProvince, int]]:
    backend = AtOnceProvince(expected=PARTS)
    app = web.Application()
    app.router.add_post("/api/filings", backend.submit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield backend, port
    finally:
        await runner.cleanup()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def instances(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[int, Callable[[], CaseStore]]]:
    """How many gateway instances deliver, and how each opens the shared case store."""
    if request.param == "sqlite":
        yield 1, lambda: SqliteCaseStore(tmp_path / "cases.db")
        return
    postgres_or_skip()
    schema = f"t_race_{secrets.token_hex(6)}"
    try:
        yield 2, lambda: PostgresCaseStore(PG_DSN, schema=schema, max_size=PARTS)
    finally:
        run_private(drop_schema(schema))


def twenty_part_case(case_id: str) -> NewCase:
    return NewCase(
        case_id=case_id,
        service="filing",
        mode=Mode.JOINT,
        subject="applicant-1",
        owner="person-1",
        actor=None,
        actor_role=None,
        client_id="portal-63",
        level="L3",
        receiving_province="63",
        purpose="race test",
        authorisation_ref=None,
        idempotency_key="race-key-0001",
        body_digest="sha256:" + "0" * 64,
        data={"n": 1},
        materials=(MaterialRef("id-card", "urn:elicence:1", "sha256:" + "1" * 64),),
        parts=tuple(PartPlan("61", "file", "filing-office") for _ in range(PARTS)),
    )


@pytest.mark.parametrize("answer", [201, 503])
async def test_parts_answered_at_once_all_land_and_are_sent_once(
    tmp_path: Path,
    province: tuple[AtOnceProvince, int],
    instances: tuple[int, Callable[[], CaseStore]],
    answer: int,
) -> None:
    """201: every part done, the case closed. 503 on the only attempt allowed: every part
    dead-lettered at the same instant, each shown as such with the system's own failure."""
    backend, port = province
    backend.status = answer
    count, open_store = instances
    settings = load_settings(write_config(tmp_path, port))
    delivery = DeliverySettings(
        batch=PARTS // count,
        lease=60.0,
        poll_interval=0.05,
        initial_backoff=0.1,
        jitter=0,
        max_attempts=1 if answer == 503 else 8,
    )
    stores: list[CaseStore] = []
    adapters: list[Adapter] = []
    workers: list[DeliveryWorker] = []
    audits: list[MemoryCaseAudit] = []
    try:
        for n in range(count):
            store = open_store()
            await store.open()
            stores.append(store)
            catalog, opened = await open_catalog(settings)
            adapters += opened
            audit = MemoryCaseAudit()
            audits.append(audit)
            workers.append(
                DeliveryWorker(
                    store,
                    lambda catalog=catalog: catalog,  # type: ignore[misc]
                    delivery,
                    events=NullEventSink(),
                    audit=audit,
                    owner=f"instance-{n}",
                )
            )
        case_id = "TB6320261206RACE00000001"
        at = iso_now()
        created = await stores[0].create(
            twenty_part_case(case_id),
            at=at,
            now=0.0,
            initial=[TransitionDraft(CaseStatus.RECEIVED, CaseStatus.RECEIVED)],
            events=[],
        )
        assert created.created
        # Each instance claims its share (the back-end answers nothing until all parts wait),
        # then every worker records its part's answer at the same moment.
        async with asyncio.timeout(60):
            busy = await asyncio.gather(*(worker.run_once() for worker in workers))
        assert all(busy)
        assert backend.all_arrived, "the back-end never saw all parts waiting at once"

        case = await stores[0].get(case_id)
        assert case is not None
        if answer == 503:
            assert [p.status for p in case.parts] == [PartStatus.DEAD_LETTERED] * PARTS
            assert case.status == CaseStatus.DEAD_LETTERED
            assert {p.cause for p in case.parts} == {
                "backend.server_error: HTTP 503 from system filing-office."
            }
            dead = await stores[0].dead_letters()
            assert sorted(e.part for e in dead if e.part is not None) == list(range(PARTS))
            assert len(backend.sends) == PARTS
            return
        assert [p.status for p in case.parts] == [PartStatus.DONE] * PARTS
        assert case.status == CaseStatus.CLOSED
        assert all(p.result and p.result["status"] == "DONE" for p in case.parts)
        # Sent once each: one key per part, each seen once.
        assert len(backend.sends) == PARTS
        assert set(backend.sends.values()) == {1}
        # Nothing waits: no entry is pending, none dead (events went to the null sink).
        entries = await stores[0].entries(case_id)
        assert [e for e in entries if e.state != "done" and e.kind != "event"] == []
        assert [e for e in entries if e.state == "dead"] == []
        # Every transition audited once: one record per part reaching done, one closure.
        events = [e for audit in audits for e in audit.events]
        assert all(e.type == EventType.CASE_TRANSITION for e in events)
        done = Counter(
            e.extra["part"] for e in events if e.extra.get("part_status") == PartStatus.DONE.value
        )
        assert done == Counter(range(PARTS))
        assert [e.outcome for e in events].count(CaseStatus.CLOSED.value) == 1
        assert len(events) == len(case.transitions) - 1  # all but the intake line
    finally:
        for worker in workers:
            await worker.aclose()
        for adapter in adapters:
            await adapter.aclose()
        for store in stores:
            await store.aclose()
