"""A client that goes away mid-call or mid-intake spends a counted use only if its request may
have been handled, over real HTTP on loopback.

The portal (or the window clerk's browser) sends its request on a connection of its own and
closes it while the gateway waits: for the Shaanxi fund centre's answer, for a free slot to it,
for the audit trail's commit of an application's intake record, for the case store's commit.
Each wait is a gate the test holds and opens only once the gateway has seen the connection go.

Two servers: the one `tongban serve` runs (gateway/serve.py: aiohttp's handler cancellation
off, so a handler whose client has gone runs to its end and its answer goes to nobody), and one
that cancels such a handler (aiohttp's test server does, as does any server for the handlers
still running when its shutdown grace ends). On both, a call that may have reached the fund
centre keeps its use and one that certainly did not gives it back; an application is taken in
(its use spent) or certainly not (its use given back), never a case without its use or a use
without a case; the chain says which.
"""

from __future__ import annotations

import asyncio
import copy
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.adapter import Call, Reply
from gateway.audit.record import AuditEvent, AuditRecord, EventType
from gateway.audit.store import StoredCheckpoint, StoredRecord
from gateway.cases.audit import CaseAudit
from gateway.cases.model import NewCase
from gateway.cases.store import CaseStoreUnavailable, CreateResult
from gateway.demo.backends import SHAANXI_HOUSING
from gateway.demo.cases import S12_CASE
from gateway.demo.residents import HAN_XUEMEI
from gateway.errors import AuditUnavailable
from gateway.http.cases import CASES
from gateway.http.keys import STATE, SUBJECTS
from gateway.serve import app_runner, limit_connections_of
from tests.flows.conftest import (
    Journey,
    audit_verify,
    chain_records,
    config_tried_once,
    consent_trail,
    demo_journey,
    grant_uses,
)
from tests.flows.test_case_grant_given_back import bearer
from tests.flows.test_case_grant_given_back import single_use_grant as newborn_grant
from tests.flows.test_grant_given_back import FUND, HAN_ACCOUNT, PURPOSE, her_account
from tests.flows.test_grant_given_back import single_use_grant as fund_grant

USED = [EventType.CONSENT_GRANTED, EventType.CONSENT_USED]
RETURNED = [*USED, EventType.CONSENT_RETURNED]
HANG = 60.0
"""Seconds before a wait for what never comes fails the test (it takes milliseconds)."""


class Served(TestServer):
    """The app on the runner `tongban serve` builds (``app_runner``, then its connection bound
    and admission door), with aiohttp's handler cancellation off as there, or on
    (``cancelling``)."""

    def __init__(self, app: web.Application, *, cancelling: bool) -> None:
        super().__init__(app, host="127.0.0.1")
        self.cancelling = cancelling

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        if self.cancelling:
            return web.AppRunner(
                self.app, access_log=None, handle_signals=False, handler_cancellation=True
            )
        return app_runner(self.app)

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kw: Any) -> None:
        await super().start_server(loop=loop, **kw)
        runner = self.runner
        assert isinstance(runner, web.AppRunner)
        assert runner.server is not None
        assert runner.server.handler_cancellation is self.cancelling
        limit_connections_of(self.app, runner)


@pytest.fixture(params=["serve", "cancelling"])
async def journey(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    log_stream: io.BytesIO,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Journey]:
    """The demo on either server; the fund centre tried once per call, so that what the
    call's trace proves is that one attempt's."""
    config = config_tried_once(tmp_path, SHAANXI_HOUSING)
    cancelling = request.param == "cancelling"
    async with demo_journey(
        tmp_path,
        monkeypatch,
        config_dir=config,
        server=lambda app: Served(app, cancelling=cancelling),
    ) as journey:
        yield journey
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


def cancelling(journey: Journey) -> bool:
    server = journey.client.server
    assert isinstance(server, Served)
    return server.cancelling


@dataclass
class Watch:
    """The server's view of the connections made from now on: ``lost`` once one is gone,
    ``handled`` once a request's handler has ended (returned, raised or been cancelled)."""

    lost: asyncio.Event = field(default_factory=asyncio.Event)
    handled: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def install(cls, journey: Journey, monkeypatch: pytest.MonkeyPatch) -> Watch:
        runner = journey.client.server.runner
        assert runner is not None
        assert runner.server is not None
        server = runner.server
        watch = cls()
        handle = server.request_handler
        gone = server.connection_lost

        async def handled(request: web.BaseRequest) -> web.StreamResponse:
            try:
                return await handle(request)
            finally:
                watch.handled.set()

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            gone(handler, exc)
            watch.lost.set()

        monkeypatch.setattr(server, "request_handler", handled)
        monkeypatch.setattr(server, "connection_lost", connection_lost)
        return watch


async def send_and_leave(
    journey: Journey,
    watch: Watch,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    at: asyncio.Event,
) -> None:
    """POST ``body`` on a connection of its own, close it once the gateway waits at ``at``
    (with no answer sent yet), and return once the gateway has seen the connection go."""
    server = journey.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    payload = orjson.dumps(body)
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {server.host}:{server.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    answer = asyncio.ensure_future(reader.read(1))
    waiting = asyncio.ensure_future(at.wait())
    await asyncio.wait({answer, waiting}, return_when=asyncio.FIRST_COMPLETED)
    answered = answer.done() and answer.result()
    answer.cancel()
    waiting.cancel()
    assert not answered, "the gateway answered before it waited at the gate"
    writer.close()
    await writer.wait_closed()
    await watch.lost.wait()


async def records_of(journey: Journey, grant: str, *types: EventType) -> list[AuditRecord]:
    return [
        r
        for r in await chain_records(journey)
        if r.event.type in types and r.event.extra.get("grant") == grant
    ]


# --- a routed call ---------------------------------------------------------------------------


class HeldAnswer:
    """The fund centre answers; the gateway's adapter holds its answer until ``gate`` opens."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.at = asyncio.Event()
        self.gate = asyncio.Event()

    async def call(self, call: Call) -> Reply:
        reply: Reply = await self._call(call)
        self.at.set()
        await self.gate.wait()
        return reply


def fund_call(grant: str) -> dict[str, Any]:
    return {
        "operation": "account-query",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": PURPOSE,
        "data": {"account_no": HAN_ACCOUNT, "id_number": HAN_XUEMEI.id_number},
        "consent": grant,
    }


async def test_a_call_the_fund_centre_answered_keeps_its_use_when_the_client_has_gone(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await fund_grant(journey)
    fund = journey.backends.recorder(SHAANXI_HOUSING)
    adapter = journey.client.app[STATE].systems[SHAANXI_HOUSING].adapter
    held = HeldAnswer(adapter.call)
    with monkeypatch.context() as patch:
        patch.setattr(adapter, "call", held.call)
        watch = Watch.install(journey, patch)
        path = f"/api/v1/services/{FUND}/calls"
        await send_and_leave(journey, watch, path, fund_call(grant), journey.auth(), held.at)
        held.gate.set()
        await watch.handled.wait()

    assert fund.count == 1, "the fund centre had the request"
    assert await grant_uses(journey, grant) == 1, "it may have been handled: the use is spent"
    assert [t for t, _ in await consent_trail(journey, grant)] == USED
    calls = await records_of(
        journey, grant, EventType.SERVICE_CALL_REQUESTED, EventType.SERVICE_CALL_COMPLETED
    )
    if cancelling(journey):
        # Its handler stopped while the answer was on its way: the request record alone,
        # which reads as a call whose outcome is unknown.
        assert [r.event.type for r in calls] == [EventType.SERVICE_CALL_REQUESTED]
    else:
        # The handler ran to its end; its answer went to nobody.
        assert [(r.event.type, r.event.outcome) for r in calls] == [
            (EventType.SERVICE_CALL_REQUESTED, None),
            (EventType.SERVICE_CALL_COMPLETED, "ok"),
        ]
    status, problem = await her_account(journey, grant)
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem


async def test_a_call_waiting_for_a_slot_gives_its_use_back_when_the_client_has_gone(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await fund_grant(journey)
    fund = journey.backends.recorder(SHAANXI_HOUSING)
    runtime = journey.client.app[STATE].systems[SHAANXI_HOUSING]
    slots = runtime.slots
    held = runtime.settings.concurrency_limit
    for _ in range(held):  # every slot to the fund centre taken by calls of others
        await slots.acquire()
    at_slot = asyncio.Event()
    acquire = slots.acquire

    async def waiting() -> bool:
        at_slot.set()
        await acquire()
        return True

    with monkeypatch.context() as patch:
        patch.setattr(slots, "acquire", waiting)
        watch = Watch.install(journey, patch)
        path = f"/api/v1/services/{FUND}/calls"
        await send_and_leave(journey, watch, path, fund_call(grant), journey.auth(), at_slot)
        # Cancelled while it waits, or (no cancellation) refused when the wait runs out
        # (gateway.system_busy): either way the call never left the gateway.
        await watch.handled.wait()
    for _ in range(held):
        slots.release()

    assert fund.count == 0
    assert await grant_uses(journey, grant) == 0, "never sent: the use is back"
    assert [t for t, _ in await consent_trail(journey, grant)] == RETURNED
    calls = await records_of(journey, grant, EventType.SERVICE_CALL_COMPLETED)
    expected = [] if cancelling(journey) else [("error", "gateway.system_busy")]
    assert [(r.event.outcome, r.event.error_code) for r in calls] == expected

    status, answer = await her_account(journey, grant)
    assert status == 200, answer
    status, problem = await her_account(journey, grant)
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem
    assert fund.count == 1


async def test_a_call_left_while_its_use_is_spent_is_never_sent_or_keeps_it(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await fund_grant(journey)
    fund = journey.backends.recorder(SHAANXI_HOUSING)
    book = journey.client.app[STATE].consent
    assert book is not None
    spend = book.store.spend
    at_spend, spent, returned = asyncio.Event(), asyncio.Event(), asyncio.Event()
    gate = asyncio.Event()

    async def spend_once_open(grant_id: str, now: float) -> int | None:
        await gate.wait()
        count: int | None = await spend(grant_id, now)
        spent.set()
        return count

    async def held_spend(grant_id: str, now: float) -> int | None:
        at_spend.set()
        # As in the store's own thread, the UPDATE goes on when its caller is cancelled.
        count: int | None = await asyncio.shield(spend_once_open(grant_id, now))
        return count

    rule = journey.client.app[SUBJECTS]
    give_back = rule.give_back

    async def given_back(uses: Any) -> None:
        await give_back(uses)
        returned.set()

    with monkeypatch.context() as patch:
        patch.setattr(book.store, "spend", held_spend)
        patch.setattr(rule, "give_back", given_back)
        watch = Watch.install(journey, patch)
        path = f"/api/v1/services/{FUND}/calls"
        await send_and_leave(journey, watch, path, fund_call(grant), journey.auth(), at_spend)
        gate.set()
        await watch.handled.wait()
        await spent.wait()
        if cancelling(journey):
            # Cancelled while the book spent the use: the rule ran to its end, and the call,
            # never sent, gave the use back. (A bound on the wait, so that a use kept fails
            # the test instead of hanging it; the give-back takes milliseconds.)
            async with asyncio.timeout(HANG):
                await returned.wait()

    if cancelling(journey):
        assert fund.count == 0
        assert await grant_uses(journey, grant) == 0
        assert [t for t, _ in await consent_trail(journey, grant)] == RETURNED
        status, answer = await her_account(journey, grant)
        assert status == 200, answer
    else:
        # The handler went on: the call reached the fund centre, the use spent.
        assert fund.count == 1
        assert await grant_uses(journey, grant) == 1
        assert [t for t, _ in await consent_trail(journey, grant)] == USED
    status, problem = await her_account(journey, grant)
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem


# --- a case application ----------------------------------------------------------------------


def newborn_application(grant: str) -> dict[str, Any]:
    """韩雪梅, at the Shaanxi portal, applies for 马文华's newborn under his grant (S12)."""
    return {**copy.deepcopy(S12_CASE[3]), "consent": grant}


def han_headers(journey: Journey, key: str) -> dict[str, str]:
    return {**bearer(journey, "demo-han", HAN_XUEMEI.id_number), "Idempotency-Key": key}


async def apply(journey: Journey, grant: str, key: str) -> tuple[int, dict[str, Any], str]:
    response = await journey.client.post(
        "/api/v1/cases", json=newborn_application(grant), headers=han_headers(journey, key)
    )
    body = await response.json(content_type=None)
    return response.status, body, response.headers.get("Idempotent-Replayed", "")


class HeldCommits:
    """The audit store's commits wait at ``gate`` from the one that holds an intake record."""

    def __init__(self, append: Any) -> None:
        self._append = append
        self.at = asyncio.Event()
        self.gate = asyncio.Event()

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        if self.at.is_set() or any(EventType.CASE_TRANSITION.value in r.text for r in records):
            self.at.set()
            await self.gate.wait()
        await self._append(records, checkpoint)


class HeldIntake:
    """The intake record waits at ``gate``, then fails closed (the trail cannot be written)."""

    def __init__(self, audit: CaseAudit) -> None:
        self._audit = audit
        self.at = asyncio.Event()
        self.gate = asyncio.Event()

    async def record(self, event: AuditEvent, *, required: bool) -> None:
        if required:
            self.at.set()
            await self.gate.wait()
            raise AuditUnavailable("The audit trail cannot be written.")
        await self._audit.record(event, required=required)


class HeldCreate:
    """The case store's transaction waits at ``gate``, then commits or (``fails``) fails
    before its commit."""

    def __init__(self, create: Any, *, fails: bool) -> None:
        self._create = create
        self.fails = fails
        self.at = asyncio.Event()
        self.gate = asyncio.Event()

    async def create(self, case: NewCase, **kwargs: Any) -> CreateResult:
        self.at.set()
        await self.gate.wait()
        if self.fails:
            raise CaseStoreUnavailable("OperationalError")
        result: CreateResult = await self._create(case, **kwargs)
        return result


async def leave_the_intake(
    journey: Journey, patch: pytest.MonkeyPatch, grant: str, key: str, gate: Any
) -> None:
    """Apply, leave while the intake waits at ``gate``, open it, wait for the intake's end;
    ``patch``: the test's monkeypatch context, which the watch joins."""
    watch = Watch.install(journey, patch)
    body = newborn_application(grant)
    headers = han_headers(journey, key)
    await send_and_leave(journey, watch, "/api/v1/cases", body, headers, gate.at)
    gate.gate.set()
    await watch.handled.wait()
    await journey.client.app[CASES].service.drain()  # an intake its cancelled handler left


async def taken_in(journey: Journey, grant: str, key: str) -> None:
    """The application was taken in with its use: the retry finds it, spending nothing."""
    assert await grant_uses(journey, grant) == 1
    status, receipt, replayed = await apply(journey, grant, key)
    assert (status, replayed) == (202, "true"), receipt
    status, problem, _ = await apply(journey, grant, "s12-gone-other")
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem
    assert [t for t, _ in await consent_trail(journey, grant)][:2] == USED
    assert EventType.CONSENT_RETURNED not in [t for t, _ in await consent_trail(journey, grant)]
    intake = [
        r
        for r in await chain_records(journey)
        if r.event.type == EventType.CASE_TRANSITION and r.event.case_id == receipt["case_id"]
    ]
    assert intake, "the intake record of the case is on the chain"


async def not_taken_in(journey: Journey, grant: str, key: str) -> None:
    """No case and the use back: the retry takes the application in, once."""
    assert await grant_uses(journey, grant) == 0
    assert [t for t, _ in await consent_trail(journey, grant)] == RETURNED
    status, receipt, replayed = await apply(journey, grant, key)
    assert (status, replayed) == (202, "false"), receipt
    status, problem, _ = await apply(journey, grant, "s12-gone-other")
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem


async def test_an_application_left_while_its_intake_record_commits_is_taken_in(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await newborn_grant(journey)
    store = journey.client.app[STATE].audit_store
    assert store is not None
    gate = HeldCommits(store.append)
    with monkeypatch.context() as patch:
        patch.setattr(store, "append", gate.append)
        await leave_the_intake(journey, patch, grant, "s12-gone-0001", gate)
    await taken_in(journey, grant, "s12-gone-0001")


async def test_an_application_left_while_its_intake_record_fails_gives_its_use_back(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = await newborn_grant(journey)
    service = journey.client.app[CASES].service
    assert service._audit is not None
    gate = HeldIntake(service._audit)
    with monkeypatch.context() as patch:
        patch.setattr(service, "_audit", gate)
        await leave_the_intake(journey, patch, grant, "s12-gone-0002", gate)
    await not_taken_in(journey, grant, "s12-gone-0002")


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "fails"])
async def test_an_application_left_while_the_case_store_commits(
    journey: Journey, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    grant = await newborn_grant(journey)
    store = journey.client.app[CASES].store
    gate = HeldCreate(store.create, fails=fails)
    key = f"s12-gone-{'0004' if fails else '0003'}"
    with monkeypatch.context() as patch:
        patch.setattr(store, "create", gate.create)
        await leave_the_intake(journey, patch, grant, key, gate)
    if fails:
        await not_taken_in(journey, grant, key)
    else:
        await taken_in(journey, grant, key)


@pytest.mark.parametrize("journey", ["cancelling"], indirect=True)
async def test_a_server_stopping_finishes_the_intake_its_cancelled_handler_left(
    journey: Journey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler is cancelled and the server stops while the case store's commit waits: the
    app waits for that intake before it closes the stores, so the case is written with its use
    spent (nothing given back), not cut off with a closed store."""
    grant = await newborn_grant(journey)
    app = journey.client.app
    service = app[CASES].service
    gate = HeldCreate(app[CASES].store.create, fails=False)
    made: list[CreateResult] = []
    create = gate.create

    async def recorded(case: NewCase, **kwargs: Any) -> CreateResult:
        made.append(await create(case, **kwargs))
        return made[-1]

    draining = asyncio.Event()
    drain = service.drain

    async def drained() -> None:
        draining.set()
        await drain()

    given_back: list[object] = []
    rule = app[SUBJECTS]
    give_back = rule.give_back

    async def giving_back(uses: Any) -> None:
        given_back.append(uses)
        await give_back(uses)

    closing = asyncio.Event()
    aclose = app[CASES].store.aclose

    async def closed() -> None:
        closing.set()
        await aclose()

    with monkeypatch.context() as patch:
        patch.setattr(app[CASES].store, "create", recorded)
        patch.setattr(app[CASES].store, "aclose", closed)
        patch.setattr(service, "drain", drained)
        patch.setattr(rule, "give_back", giving_back)
        watch = Watch.install(journey, patch)
        body = newborn_application(grant)
        headers = han_headers(journey, "s12-gone-0005")
        await send_and_leave(journey, watch, "/api/v1/cases", body, headers, gate.at)
        await watch.handled.wait()  # cancelled; the intake waits on
        stopping = asyncio.ensure_future(journey.client.server.close())
        # The app's clean-up waits for the intake, or (were it not to) closes the store.
        waits = [asyncio.ensure_future(e.wait()) for e in (draining, closing)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        assert not closing.is_set(), "the case store closed under an intake"
        gate.gate.set()
        await stopping
    assert [r.created for r in made] == [True]
    assert given_back == []
