"""How many durable commits a routed call waits for: one for `required` (before the back-end
is called), none for `buffered`, two only when the service asks for a durable outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.adapter import Call, Reply
from gateway.audit.calls import AuditMode, CallAuditor, OutcomeMode, RouteAudit
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import AuditRecord
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.errors import AuditUnavailable, BackendServerError
from gateway.pipeline import CallTrace, with_audit
from gateway.settings import ServiceSettings
from tests.calls import CONTEXT
from tests.unit.audit.gated_store import GatedStore

CALL = Call("Op", {"x": 1}, CONTEXT)


class Backend:
    """The inner stack: notes how many commits had happened when the back-end was reached."""

    def __init__(self, store: GatedStore, fail: bool = False) -> None:
        self.store = store
        self.commits_when_called: list[int] = []
        self.fail = fail
        self.called = asyncio.Event()

    async def __call__(self, call: Call, trace: CallTrace) -> Reply:
        self.commits_when_called.append(self.store.commits)
        self.called.set()
        trace.attempts += 1
        if self.fail:
            raise BackendServerError("down", reached_backend=True)
        return Reply({"ok": True}, request_digest="sha256:a", response_digest="sha256:b")


@pytest.fixture
def store() -> GatedStore:
    return GatedStore()


@pytest.fixture
async def writer(store: GatedStore) -> AsyncIterator[AuditWriter]:
    settings = WriterSettings(linger=0.0, checkpoint_every=10_000, checkpoint_interval=3600)
    writer = AuditWriter(
        store,
        chain="gw",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
        settings=settings,
    )
    await writer.start()
    yield writer
    store.gate.set()
    await writer.aclose()


def _route(mode: AuditMode, outcome: OutcomeMode = "buffered") -> RouteAudit:
    return RouteAudit("svc", "op", "sys", "Op", mode, outcome)


async def _types(store: GatedStore, writer: AuditWriter) -> list[str]:
    store.gate.set()
    await writer.flush()
    rows: list[str] = []
    async for page in store.read_pages("gw", 1):
        rows.extend(AuditRecord.from_stored(r.text, r.hash).event.type.value for r in page)
    return rows


async def test_required_commits_once_before_the_call_and_does_not_hold_the_answer(
    store: GatedStore, writer: AuditWriter
) -> None:
    backend = Backend(store)
    audited = with_audit(backend, CallAuditor(writer), _route("required"))
    before = store.commits

    task = asyncio.ensure_future(audited(CALL, CallTrace()))
    # The request record was committed before the back-end was reached (one commit)...
    await backend.called.wait()
    assert backend.commits_when_called == [before + 1]
    # ...and from now on no commit can complete: the answer comes back all the same (the
    # outcome waits for the next commit, not the caller).
    store.gate.clear()
    reply = await task
    assert reply.data == {"ok": True}
    assert store.commits == before + 1
    assert (await _types(store, writer))[-2:] == [
        "service_call_requested",
        "service_call_completed",
    ]


async def test_a_durable_outcome_holds_the_answer_for_a_second_commit(
    store: GatedStore, writer: AuditWriter
) -> None:
    backend = Backend(store)
    audited = with_audit(backend, CallAuditor(writer), _route("required", "durable"))
    task = asyncio.ensure_future(audited(CALL, CallTrace()))
    await backend.called.wait()
    store.gate.clear()
    await store.waiting.wait()  # the outcome's commit has begun and is held at the gate
    assert not task.done()  # so is the answer
    store.gate.set()
    assert (await task).data == {"ok": True}
    assert (await _types(store, writer))[-1] == "service_call_completed"


async def test_buffered_waits_for_no_commit(store: GatedStore, writer: AuditWriter) -> None:
    store.gate.clear()  # no commit can complete during the call
    backend = Backend(store)
    audited = with_audit(backend, CallAuditor(writer), _route("buffered"))
    before = store.commits
    reply = await audited(CALL, CallTrace())
    assert reply.data == {"ok": True}
    assert store.commits == before  # nothing was committed while the call ran
    # Both records follow in order once the store lets them through.
    assert (await _types(store, writer))[-2:] == [
        "service_call_requested",
        "service_call_completed",
    ]


async def test_required_still_fails_closed_before_the_call(
    store: GatedStore, writer: AuditWriter
) -> None:
    store.available = False
    backend = Backend(store)
    audited = with_audit(backend, CallAuditor(writer), _route("required"))
    with pytest.raises(AuditUnavailable):
        await audited(CALL, CallTrace())
    assert backend.commits_when_called == [], "no audit, no call"


async def test_an_error_outcome_is_recorded_without_holding_the_error(
    store: GatedStore, writer: AuditWriter
) -> None:
    backend = Backend(store, fail=True)
    audited = with_audit(backend, CallAuditor(writer), _route("required"))
    task = asyncio.ensure_future(audited(CALL, CallTrace()))
    await backend.called.wait()
    store.gate.clear()
    with pytest.raises(BackendServerError):
        await task
    assert (await _types(store, writer))[-1] == "service_call_completed"


def test_a_durable_outcome_needs_a_required_service() -> None:
    base = {
        "name": {"zh": "查询", "en": "Query"},
        "modes": ["query"],
        "min_level": "L1",
        "operations": {
            "q": {
                "name": {"zh": "查", "en": "Q"},
                "kind": "query",
                "retry": "safe",
                "input_schema": {"type": "object"},
            }
        },
    }
    ServiceSettings.model_validate({**base, "audit_outcome": "durable"})
    with pytest.raises(ValueError, match="audit_outcome: durable needs audit: required"):
        ServiceSettings.model_validate({**base, "audit": "buffered", "audit_outcome": "durable"})
